//! Your own data: torchvision's ImageFolder layout, and a safetensors file of tensors.
//!
//! ImageFolder (`[dataset] name = "image_folder"`, `path` the folder, `resolution` the size):
//! `train/<class>/**/*.png|jpg|jpeg` and `val/<class>/...` (or `test/<class>/...`), read as
//! torchvision's `ImageFolder` reads them: the classes are the sorted names of the folders in
//! `train/` (index = position), files are found recursively in sorted (folder, name) order, the
//! extension is matched case-insensitively, and a class folder with no image is an error. Images
//! are converted to RGB, resized to exactly [height, width] with an antialiased bilinear filter
//! (torchvision's `Resize((h, w))`) and, with `channels = 1`, turned to grayscale as PIL's
//! `convert("L")` does. The test split is labelled with the train split's class indices, so a
//! `val/` that lacks a class keeps the others' labels.
//!
//! Decoding is the slow part, so the decoded uint8 tensors are cached on the worker's disk, keyed
//! by content: the sha256 over every file's bytes, its class and relative path, the resolution and
//! the channel count. A second job on the same data reads the cache (one file) instead of decoding;
//! a changed, added or removed image changes the key. The cache lives in `$LTH_DATA_CACHE`, else
//! `$XDG_CACHE_HOME/lth/datasets`, else `~/.cache/lth/datasets` (`LTH_DATA_CACHE=off` disables it).
//!
//! safetensors (`name = "safetensors"`, `path` the file): `train_images` and `test_images` uint8
//! N×H×W×C (N×H×W for one channel), `train_labels` and `test_labels` N integers; classes = the
//! largest label + 1.

use super::artifacts;
use super::data::{HostDataset, HostSplit};
use super::models::InputShape;
use anyhow::{anyhow, bail, Context, Result};
use lth_sweep::{DatasetKind, DatasetSpec};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Bumped whenever decoding changes (filter, colour conversion), so old caches are not reused.
const CACHE_FORMAT: &str = "lth-image-folder-v1";
/// Extensions lth decodes. torchvision's other image extensions are refused, not skipped, so
/// that a dataset never silently loses files.
const DECODED: [&str; 3] = ["png", "jpg", "jpeg"];
const TORCHVISION_ONLY: [&str; 6] = ["ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// Whether a load used the decoded-image cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// Read from this cache file; nothing was decoded.
    Hit(PathBuf),
    /// Decoded, and written to this cache file.
    Miss(PathBuf),
    /// No cache (disabled, or a dataset kind that needs none).
    Off,
}

/// The decoded-image cache folder from the environment; `None` when disabled.
pub fn default_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("LTH_DATA_CACHE") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(base.join("lth").join("datasets"))
        }
    }
}

/// The (image, label) files of one split, in torchvision's order.
fn list_split(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    let index: HashMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut here = class_dirs(dir)?;
    here.sort();
    for c in &here {
        let Some(&label) = index.get(c.as_str()) else {
            bail!(
                "{}/{c} is not a class of the train split (its classes: {}): every test class must also be in train/",
                dir.display(),
                preview(classes)
            );
        };
        let mut files = Vec::new();
        walk(&dir.join(c), &mut files)?;
        // torchvision: sorted(os.walk(...)) then sorted(fnames): by folder, then by name.
        files.sort();
        let mut n = 0;
        for (folder, name) in files {
            let lower = name.to_ascii_lowercase();
            let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            if DECODED.contains(&ext) {
                out.push((folder.join(&name), label as i64));
                n += 1;
            } else if TORCHVISION_ONLY.contains(&ext) {
                bail!("{}: lth decodes PNG and JPEG images only; convert this file (and its siblings) to PNG", folder.join(&name).display());
            }
        }
        if n == 0 {
            bail!(
                "{}/{c} holds no .png/.jpg/.jpeg image: torchvision's ImageFolder refuses empty classes too; remove the folder or add its images",
                dir.display()
            );
        }
    }
    Ok(out)
}

fn preview(classes: &[String]) -> String {
    let mut s = classes.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if classes.len() > 8 {
        s.push_str(&format!(", ... ({} in all)", classes.len()));
    }
    s
}

/// Names of the sub-folders of `dir` (symlinks followed, as os.scandir's is_dir does).
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.path().is_dir() {
            v.push(e.file_name().into_string().map_err(|n| anyhow!("{}: folder name {n:?} is not UTF-8", dir.display()))?);
        }
    }
    Ok(v)
}

/// Every file under `dir`, as (folder, file name), following symlinks.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() {
            out.push((dir.to_path_buf(), e.file_name().to_string_lossy().into_owned()));
        }
    }
    Ok(())
}

/// Runs `f` over `items` on up to 16 threads, keeping the order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    let parts: Vec<Result<Vec<R>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(chunk).map(|c| s.spawn(move || c.iter().map(f).collect::<Result<Vec<R>>>())).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a dataset reader thread panicked")))).collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// One image as uint8 C×H×W at the declared size.
fn decode(path: &Path, height: u32, width: u32, channels: u32) -> Result<Vec<u8>> {
    // The format comes from the bytes, not the extension (a PNG named .jpg still decodes).
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding {} (a corrupt or truncated image?)", path.display()))?;
    let rgb = img.to_rgb8();
    let rgb = if rgb.dimensions() != (width, height) { image::imageops::resize(&rgb, width, height, image::imageops::FilterType::Triangle) } else { rgb };
    let (raw, c) = if channels == 1 {
        // PIL's convert("L") (ITU-R 601-2 luma, fixed point with rounding), which torchvision's
        // Grayscale uses; the image crate's own luma uses other (BT.709) weights.
        let l = rgb.pixels().map(|p| ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8).collect();
        (l, 1usize)
    } else {
        (rgb.into_raw(), 3usize)
    };
    // HWC → CHW
    let plane = (height * width) as usize;
    let mut out = vec![0u8; c * plane];
    for (i, px) in raw.chunks_exact(c).enumerate() {
        for (ch, v) in px.iter().enumerate() {
            out[ch * plane + i] = *v;
        }
    }
    Ok(out)
}

fn split_of(files: &[(PathBuf, i64)], height: u32, width: u32, channels: u32) -> Result<HostSplit> {
    let parts = parallel(files, |(p, _)| decode(p, height, width, channels))?;
    Ok(HostSplit { images: parts.concat(), labels: files.iter().map(|(_, l)| *l).collect(), len: files.len() })
}

/// The content key of an ImageFolder dataset at a resolution (see the module comment).
fn content_key(root: &Path, splits: &[(&str, &[(PathBuf, i64)])], classes: &[String], height: u32, width: u32, channels: u32) -> Result<String> {
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update(format!("|{height}x{width}x{channels}|").as_bytes());
    for c in classes {
        h.update(c.as_bytes());
        h.update([0]);
    }
    for (name, files) in splits {
        h.update(format!("|split {name} {}|", files.len()).as_bytes());
        let digests = parallel(files, |(p, _)| -> Result<[u8; 32]> {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Sha256::digest(&bytes).into())
        })?;
        for ((p, label), d) in files.iter().zip(digests) {
            let rel = p.strip_prefix(root).unwrap_or(p);
            h.update(label.to_le_bytes());
            h.update(rel.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(d);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Loads an ImageFolder dataset, through the decoded cache in `cache` when given.
pub fn load_image_folder(spec: &DatasetSpec, cache: Option<&Path>) -> Result<(HostDataset, CacheUse)> {
    let root = PathBuf::from(spec.path.as_deref().context("image_folder needs `path`: the folder holding train/ and val/")?);
    let res = spec.resolution.context("image_folder needs `resolution` (e.g. resolution = 64): images are decoded once at that size")?;
    let channels = spec.channels.unwrap_or(3);
    if channels != 1 && channels != 3 {
        bail!("image_folder decodes to 3 (RGB) or 1 (grayscale) channels, not {channels}");
    }
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        bail!("{} has no train/ folder: the ImageFolder layout is train/<class>/*.png|jpg and val/<class>/...", root.display());
    }
    let test_dir = ["val", "test"].iter().map(|s| root.join(s)).find(|p| p.is_dir()).ok_or_else(|| {
        anyhow!("{} has no val/ (or test/) folder: lth evaluates on it; put a labelled split there, laid out like train/", root.display())
    })?;
    let mut classes = class_dirs(&train_dir)?;
    classes.sort();
    if classes.len() < 2 {
        bail!("{} holds {} class folder(s): a classifier needs at least 2 (train/<class>/...)", train_dir.display(), classes.len());
    }
    let train = list_split(&train_dir, &classes)?;
    let test = list_split(&test_dir, &classes)?;
    let shape = InputShape { channels: channels as i64, height: res.height as i64, width: res.width as i64 };
    let from_parts = |train: HostSplit, test: HostSplit| HostDataset { name: DatasetKind::ImageFolder, shape, classes: classes.len() as i64, train, test };

    let Some(cache) = cache else {
        let t = split_of(&train, res.height, res.width, channels)?;
        let v = split_of(&test, res.height, res.width, channels)?;
        return Ok((from_parts(t, v), CacheUse::Off));
    };
    let key = content_key(&root, &[("train", &train), ("test", &test)], &classes, res.height, res.width, channels)?;
    let file = cache.join(format!("{key}.safetensors"));
    if file.is_file() {
        match read_cached(&file, shape) {
            Ok((t, v)) => return Ok((from_parts(t, v), CacheUse::Hit(file))),
            // A torn or foreign file: decode again and replace it.
            Err(e) => eprintln!("warning: ignoring the unreadable dataset cache {}: {e:#}", file.display()),
        }
    }
    let t = split_of(&train, res.height, res.width, channels)?;
    let v = split_of(&test, res.height, res.width, channels)?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating the dataset cache folder {} (set LTH_DATA_CACHE elsewhere, or to off)", cache.display()))?;
    let dims = |n: usize| [n as i64, shape.channels, shape.height, shape.width];
    let tensors = vec![
        ("train_images".to_string(), Tensor::from_slice(&t.images).reshape(dims(t.len))),
        ("train_labels".to_string(), Tensor::from_slice(&t.labels)),
        ("test_images".to_string(), Tensor::from_slice(&v.images).reshape(dims(v.len))),
        ("test_labels".to_string(), Tensor::from_slice(&v.labels)),
    ];
    artifacts::write_atomic(&file, &tensors)?;
    Ok((from_parts(t, v), CacheUse::Miss(file)))
}

fn read_cached(file: &Path, shape: InputShape) -> Result<(HostSplit, HostSplit)> {
    let t = artifacts::read(file)?;
    let split = |prefix: &str| -> Result<HostSplit> {
        let images = t.get(&format!("{prefix}_images")).with_context(|| format!("no {prefix}_images"))?;
        let labels = t.get(&format!("{prefix}_labels")).with_context(|| format!("no {prefix}_labels"))?;
        let s = images.size();
        if s.len() != 4 || s[1..] != [shape.channels, shape.height, shape.width] {
            bail!("{prefix}_images has shape {s:?}");
        }
        Ok(HostSplit { images: artifacts::bytes_of(images)?, labels: Vec::<i64>::try_from(&labels.to_kind(Kind::Int64))?, len: s[0] as usize })
    };
    Ok((split("train")?, split("test")?))
}

/// Loads a safetensors tensor file (see the module comment).
pub fn load_safetensors(path: &Path) -> Result<HostDataset> {
    if !path.is_file() {
        bail!("{} is not a file: for name = \"safetensors\", `path` is the .safetensors file itself", path.display());
    }
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .with_context(|| format!("reading {} (not a safetensors file?)", path.display()))?
        .into_iter()
        .collect();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    let get = |k: &str| {
        t.get(k).ok_or_else(|| {
            anyhow!("{} has no tensor {k:?} (it holds {names:?}): a dataset file needs train_images, train_labels, test_images and test_labels", path.display())
        })
    };
    let images = |k: &str| -> Result<(Tensor, InputShape)> {
        let x = get(k)?;
        if x.kind() != Kind::Uint8 {
            bail!("{k} in {} is {:?}: images must be uint8 pixels 0-255 (in PyTorch: x.to(torch.uint8))", path.display(), x.kind());
        }
        let x = match x.dim() {
            3 => x.unsqueeze(3),
            4 => x.shallow_clone(),
            _ => bail!("{k} in {} has shape {:?}: images are N×H×W×C (or N×H×W for one channel)", path.display(), x.size()),
        };
        let s = x.size();
        let shape = InputShape { channels: s[3], height: s[1], width: s[2] };
        if !(1..=4).contains(&shape.channels) {
            bail!("{k} in {} has shape {s:?}: {} channels in the last axis; images are N×H×W×C, not N×C×H×W (permute with x.permute(0, 2, 3, 1))", path.display(), s[3]);
        }
        Ok((x.permute([0, 3, 1, 2]).contiguous(), shape))
    };
    let labels = |k: &str, n: i64| -> Result<Vec<i64>> {
        let y = get(k)?;
        if !matches!(y.kind(), Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64) || y.dim() != 1 {
            bail!("{k} in {} is {:?} of shape {:?}: labels are one integer per image", path.display(), y.kind(), y.size());
        }
        if y.size()[0] != n {
            bail!("{k} in {} holds {} labels for {n} images", path.display(), y.size()[0]);
        }
        Ok(Vec::<i64>::try_from(&y.to_kind(Kind::Int64))?)
    };
    let (train_x, shape) = images("train_images")?;
    let (test_x, test_shape) = images("test_images")?;
    if shape != test_shape {
        bail!("{}: train images are {}×{}×{} (H×W×C) but test images {}×{}×{}", path.display(), shape.height, shape.width, shape.channels, test_shape.height, test_shape.width, test_shape.channels);
    }
    let train_y = labels("train_labels", train_x.size()[0])?;
    let test_y = labels("test_labels", test_x.size()[0])?;
    if let Some(bad) = train_y.iter().chain(&test_y).find(|&&l| l < 0) {
        bail!("{}: label {bad} is negative: labels are class indices 0..classes", path.display());
    }
    let classes = train_y.iter().chain(&test_y).copied().max().unwrap_or(0) + 1;
    let split = |x: &Tensor, y: Vec<i64>| -> Result<HostSplit> { Ok(HostSplit { images: artifacts::bytes_of(x)?, len: y.len(), labels: y }) };
    Ok(HostDataset { name: DatasetKind::Safetensors, shape, classes, train: split(&train_x, train_y)?, test: split(&test_x, test_y)? })
}
