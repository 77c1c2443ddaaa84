//! Packing an ImageFolder directory into one file for upload, deterministically: the same tree
//! (file names and bytes) always gives the same bytes, hence the same sha256, wherever and whenever
//! it is packed. The format is POSIX ustar (`tar tf` lists it): regular files only, in byte order
//! of their relative paths, mode 0644, uid/gid 0, mtime 0, no user or group names; directories are
//! implied by the paths. The worker unpacks it with [`unpack_tar`], which accepts exactly this
//! subset (and refuses links, absolute paths and `..`).

use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

const BLOCK: usize = 512;

/// What [`pack_image_folder`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub files: u64,
    /// Bytes of file content (the archive is larger by its headers and padding).
    pub content_bytes: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Every regular file under `root` (symbolic links followed), as paths relative to it with `/`
/// separators, sorted by their bytes.
fn files_under(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let p = e.path();
            let meta = std::fs::metadata(&p)?;
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                let rel = p.strip_prefix(root).expect("under root");
                let mut parts = Vec::new();
                for c in rel.components() {
                    match c {
                        Component::Normal(s) => parts.push(
                            s.to_str().ok_or_else(|| invalid(format!("{} is not a UTF-8 file name: rename it", p.display())))?.to_string(),
                        ),
                        _ => return Err(invalid(format!("unexpected path component in {}", p.display()))),
                    }
                }
                out.push((parts.join("/"), p));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

fn octal(field: &mut [u8], value: u64) -> io::Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(invalid(format!("{value} does not fit a tar header field")));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// name (≤ 100 bytes) and prefix (≤ 155 bytes), split at a `/`.
fn split_name(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    for (i, b) in path.bytes().enumerate() {
        if b == b'/' && i <= 155 && path.len() - i - 1 <= 100 {
            return Ok((&path[..i], &path[i + 1..]));
        }
    }
    Err(invalid(format!("the path {path:?} is too long to pack (at most 255 bytes, 100 after the last split): shorten it")))
}

fn header(path: &str, size: u64) -> io::Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    let (prefix, name) = split_name(path)?;
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644)?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], 0)?;
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h[148..155], sum)?;
    h[155] = b' ';
    Ok(h)
}

/// Writes the ImageFolder tree under `root` (holding `train/`, and `val/` or `test/`) to `out` as
/// a deterministic tar (see the module doc).
pub fn pack_image_folder(root: &Path, out: &mut impl Write) -> io::Result<Packed> {
    if !root.join("train").is_dir() {
        return Err(invalid(format!(
            "{} holds no train/ folder: an ImageFolder dataset is train/<class>/*.png|jpg and val/<class>/... (or test/)",
            root.display()
        )));
    }
    let files = files_under(root)?;
    let mut packed = Packed { files: 0, content_bytes: 0 };
    let zeros = [0u8; BLOCK];
    for (rel, path) in files {
        let mut f = std::fs::File::open(&path)?;
        let size = f.metadata()?.len();
        out.write_all(&header(&rel, size)?)?;
        let copied = io::copy(&mut (&mut f).take(size), out)?;
        if copied != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} changed while it was packed", path.display())));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        out.write_all(&zeros[..pad])?;
        packed.files += 1;
        packed.content_bytes += size;
    }
    out.write_all(&zeros)?;
    out.write_all(&zeros)?;
    Ok(packed)
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).filter(|&b| b != b' ').collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Unpacks a tar written by [`pack_image_folder`] into `dest` (created). Only regular files with
/// relative paths are accepted; anything else (links, devices, `..`, absolute paths, a bad header
/// checksum) is an error. Returns the number of files.
pub fn unpack_tar(input: &mut impl Read, dest: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(dest)?;
    let mut files = 0u64;
    let mut h = [0u8; BLOCK];
    loop {
        input.read_exact(&mut h)?;
        if h.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| invalid("a tar header has an unreadable checksum".into()))?;
        let mut sum: u64 = h.iter().map(|&b| b as u64).sum();
        sum -= h[148..156].iter().map(|&b| b as u64).sum::<u64>();
        sum += 8 * b' ' as u64;
        if sum != stored {
            return Err(invalid("a tar header's checksum does not match: the archive is corrupt".into()));
        }
        let (name, prefix) = (cstr(&h[..100]), cstr(&h[345..500]));
        let path = if prefix.is_empty() { name.to_vec() } else { [prefix, b"/", name].concat() };
        let path = String::from_utf8(path).map_err(|_| invalid("a tar entry's name is not UTF-8".into()))?;
        if h[156] != b'0' && h[156] != 0 {
            return Err(invalid(format!("tar entry {path:?} is not a regular file (type {:?}): only files are unpacked", h[156] as char)));
        }
        let rel = Path::new(&path);
        if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid(format!("tar entry {path:?} is not a plain relative path")));
        }
        let size = parse_octal(&h[124..136]).ok_or_else(|| invalid(format!("tar entry {path:?} has an unreadable size")))?;
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&target)?;
        let copied = io::copy(&mut input.take(size), &mut f)?;
        if copied != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("tar entry {path:?} is cut short")));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        io::copy(&mut input.take(pad as u64), &mut io::sink())?;
        files += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        for (p, bytes) in [
            ("train/dog/b.png", &b"dog b"[..]),
            ("train/cat/z.png", b"cat z"),
            ("train/cat/sub/a.png", b""),
            ("val/cat/q.jpg", &[7u8; 700][..]),
        ] {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let long = format!("train/{}/{}.png", "c".repeat(120), "f".repeat(90));
        std::fs::create_dir_all(root.join(&long).parent().unwrap()).unwrap();
        std::fs::write(root.join(long), b"long").unwrap();
    }

    #[test]
    fn the_same_tree_packs_to_the_same_bytes_and_unpacks_to_itself() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(a.path());
        tree(b.path());
        // Different mtimes and permissions must not matter.
        let f = std::fs::File::options().write(true).open(b.path().join("train/dog/b.png")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(12345)).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let packed = pack_image_folder(a.path(), &mut x).unwrap();
        pack_image_folder(b.path(), &mut y).unwrap();
        assert_eq!(x, y, "the same tree gives the same archive");
        assert_eq!(packed.files, 5);
        assert_eq!(x.len() % BLOCK, 0);

        let out = tempfile::tempdir().unwrap();
        assert_eq!(unpack_tar(&mut x.as_slice(), out.path()).unwrap(), 5);
        let mut z = Vec::new();
        pack_image_folder(out.path(), &mut z).unwrap();
        assert_eq!(x, z, "unpacking and packing again gives the same archive");
        assert_eq!(std::fs::read(out.path().join("val/cat/q.jpg")).unwrap(), vec![7u8; 700]);

        // Another byte in one file: another archive.
        std::fs::write(b.path().join("train/cat/z.png"), b"cat Z").unwrap();
        let mut w = Vec::new();
        pack_image_folder(b.path(), &mut w).unwrap();
        assert_ne!(x, w);
    }

    #[test]
    fn corrupt_or_unsafe_archives_are_refused() {
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        let mut x = Vec::new();
        pack_image_folder(a.path(), &mut x).unwrap();
        let mut bad = x.clone();
        bad[3] ^= 1;
        let err = unpack_tar(&mut bad.as_slice(), &a.path().join("out1")).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");

        let mut evil = Vec::new();
        evil.extend_from_slice(&header("../escape", 1).unwrap());
        evil.extend_from_slice(&[b'x'; BLOCK]);
        evil.extend_from_slice(&[0u8; 2 * BLOCK]);
        let err = unpack_tar(&mut evil.as_slice(), &a.path().join("out2")).unwrap_err().to_string();
        assert!(err.contains("not a plain relative path"), "{err}");
        assert!(!a.path().join("escape").exists());

        let err = pack_image_folder(&a.path().join("train"), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("no train/ folder"), "{err}");
    }
}
