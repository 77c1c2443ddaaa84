//! Your own model and data through the coordinator: `lthctl submit` uploads a sweep's TorchScript
//! file, `lthctl dataset upload` an ImageFolder directory (packed into a deterministic tar by
//! `lth_sweep::pack`) or a safetensors file. Inputs are content-addressed: what the coordinator
//! already holds (asked with ListInputs) is not sent again.

use crate::client::Coordinator;
use anyhow::{bail, Context, Result};
use lth_proto::v1 as pb;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const CHUNK: usize = 1 << 20;

/// sha256 (hex) and length of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(h.finalize()), total))
}

/// The coordinator's record of `sha256`, if it holds that input.
pub async fn find(coord: &Coordinator, sha256: &str) -> Result<Option<pb::InputInfo>> {
    let mut c = coord.sweeps.clone();
    let resp = c
        .list_inputs(pb::ListInputsRequest { sha256: vec![sha256.to_string()] })
        .await
        .map_err(|s| coord.explain(s, "looking up an upload"))?
        .into_inner();
    Ok(resp.inputs.into_iter().find(|i| i.sha256.eq_ignore_ascii_case(sha256)))
}

/// Uploads `path` as an input of `kind` named `name`, unless the coordinator already holds its
/// digest. Returns the coordinator's record (`created` false when nothing was sent).
pub async fn upload_file(coord: &Coordinator, path: &Path, kind: pb::InputKind, name: &str) -> Result<pb::InputInfo> {
    let (sha, len) = sha256_file(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(found) = find(coord, &sha).await? {
        return Ok(pb::InputInfo { created: false, ..found });
    }
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let first = pb::InputChunk { sha256: sha.clone(), total_bytes: len, kind: kind as i32, name: name.to_string(), data: Vec::new() };
    let chunks = futures_lite_chunks(file, first);
    let mut c = coord.sweeps.clone();
    let info = c
        .upload_input(tokio_stream::iter(chunks))
        .await
        .map_err(|s| coord.explain(s, &format!("the upload of {}", path.display())))?
        .into_inner();
    if !info.sha256.eq_ignore_ascii_case(&sha) {
        bail!("the coordinator stored {} as sha256 {}, but the file has {sha}", path.display(), info.sha256);
    }
    Ok(info)
}

/// The file as upload chunks (read up front in 1 MiB pieces; an input is bounded by the
/// coordinator's limit, and the chunks are sent as they are produced by the iterator).
fn futures_lite_chunks(file: std::fs::File, first: pb::InputChunk) -> impl Iterator<Item = pb::InputChunk> + Send + 'static {
    let mut file = Some(file);
    let mut header = Some(first);
    std::iter::from_fn(move || {
        let f = file.as_mut()?;
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(_) => break,
            }
        }
        buf.truncate(filled);
        if filled < CHUNK {
            file = None;
        }
        match header.take() {
            Some(mut h) => {
                h.data = buf;
                Some(h)
            }
            None if filled == 0 => None,
            None => Some(pb::InputChunk { data: buf, ..Default::default() }),
        }
    })
}

/// What `lthctl dataset upload PATH` sends: an ImageFolder directory, packed; or a .safetensors file.
pub enum DatasetSource {
    ImageFolder { dir: PathBuf },
    Safetensors { file: PathBuf },
}

impl DatasetSource {
    pub fn of(path: &Path) -> Result<DatasetSource> {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            Ok(DatasetSource::ImageFolder { dir: path.to_path_buf() })
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            Ok(DatasetSource::Safetensors { file: path.to_path_buf() })
        } else {
            bail!(
                "{} is neither a folder (an ImageFolder dataset: train/<class>/*.png|jpg, val/<class>/...) nor a .safetensors file",
                path.display()
            )
        }
    }
}

pub async fn dataset_upload(coord: &Coordinator, path: &Path, name: Option<String>, out: &mut dyn Write) -> Result<()> {
    let source = DatasetSource::of(path)?;
    let default_name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dataset".into());
    let name = name.unwrap_or(default_name);
    let (info, kind_name, extra) = match &source {
        DatasetSource::ImageFolder { dir } => {
            let tmp = tempfile_in_temp_dir()?;
            let packed = {
                let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?);
                let p = lth_sweep::pack::pack_image_folder(dir, &mut w).with_context(|| format!("cannot pack {}", dir.display()))?;
                w.flush()?;
                p
            };
            writeln!(out, "packed {} ({} files, {} bytes of images)", dir.display(), packed.files, packed.content_bytes)?;
            let info = upload_file(coord, &tmp, pb::InputKind::ImageFolder, &name).await;
            let _ = std::fs::remove_file(&tmp);
            (info?, "image_folder", "resolution = 32            # the size every image is decoded to: choose yours\n")
        }
        DatasetSource::Safetensors { file } => (upload_file(coord, file, pb::InputKind::Safetensors, &name).await?, "safetensors", ""),
    };
    if info.created {
        writeln!(out, "uploaded {name:?} as sha256:{} ({} bytes)", info.sha256, info.bytes)?;
    } else {
        writeln!(out, "the coordinator already holds sha256:{} ({:?}, {} bytes): nothing was sent", info.sha256, info.name, info.bytes)?;
    }
    writeln!(out, "use it in a sweep file:\n\n[dataset]\nname = \"{kind_name}\"\nupload = \"sha256:{}\"\n{extra}", info.sha256)?;
    Ok(())
}

fn tempfile_in_temp_dir() -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(std::env::temp_dir().join(format!("lthctl-pack-{}-{nanos}.tar", std::process::id())))
}

pub fn kind_text(kind: i32) -> &'static str {
    match pb::InputKind::try_from(kind) {
        Ok(pb::InputKind::Torchscript) => "torchscript",
        Ok(pb::InputKind::ImageFolder) => "image_folder",
        Ok(pb::InputKind::Safetensors) => "safetensors",
        _ => "?",
    }
}
