//! Dataset loaders (real on-disk formats) and the on-device input pipeline.
//!
//! Every dataset is decoded once into uint8 N×C×H×W tensors that live on the training device; each
//! step gathers its batch, applies random crop (4-pixel zero padding) and horizontal flip as two
//! batched `gather`s, converts to float and normalises, all as tensor ops on that device. The
//! shuffle order and the crop/flip draws of an epoch come from the crate's RNG seeded by
//! (seed, epoch) and are uploaded once per epoch, so a resumed job replays exactly the same batches.
//!
//! Augmentation is applied to CIFAR and TinyImageNet only; MNIST and the digits are never flipped
//! or cropped (a flipped digit is another symbol), as in open_lth.
//!
//! The bundled UCI digits (1797 images) are split deterministically: the first 1500 rows train,
//! the last 297 rows test.
//!
//! Your own data (ImageFolder, safetensors) is read by `custom_data`; its augmentation default and
//! optional given mean/std come from the dataset spec.

use super::custom_data;
pub use super::custom_data::CacheUse;
use super::models::InputShape;
use super::rng::Rng;
use anyhow::{anyhow, bail, Context, Result};
use lth_sweep::{DatasetKind, DatasetSpec};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The bundled UCI digits, compiled into the binary so the CPU demo and tests need no files.
pub static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/digits/digits.csv.gz");
/// Rows of the digits used for training; the remaining 297 are the test split.
pub const DIGITS_TRAIN_ROWS: usize = 1500;

/// Images and labels decoded on the host (uint8 N×C×H×W, labels 0..classes).
pub struct HostSplit {
    pub images: Vec<u8>,
    pub labels: Vec<i64>,
    pub len: usize,
}

/// A whole dataset on the host, before it moves to the device.
pub struct HostDataset {
    pub name: DatasetKind,
    pub shape: InputShape,
    pub classes: i64,
    pub train: HostSplit,
    pub test: HostSplit,
}

/// A dataset resident on the training device.
pub struct Dataset {
    pub name: DatasetKind,
    pub shape: InputShape,
    pub classes: i64,
    pub train_images: Tensor,
    pub train_labels: Tensor,
    pub test_images: Tensor,
    pub test_labels: Tensor,
    /// Per-channel mean and std of the training images on the 0–255 (0–16 for digits) scale.
    pub mean: Tensor,
    pub std: Tensor,
    /// Whether random crop + flip apply to this dataset.
    pub augmentable: bool,
}

impl HostSplit {
    fn check(&self, shape: InputShape, classes: i64, what: &str) -> Result<()> {
        let per = (shape.channels * shape.height * shape.width) as usize;
        if self.images.len() != self.len * per || self.labels.len() != self.len {
            bail!("{what}: decoded {} bytes / {} labels for {} images of {per} bytes", self.images.len(), self.labels.len(), self.len);
        }
        if let Some(bad) = self.labels.iter().find(|&&l| l < 0 || l >= classes) {
            bail!("{what}: label {bad} outside 0..{classes}; is this the right dataset kind?");
        }
        if self.len == 0 {
            bail!("{what}: no images found");
        }
        Ok(())
    }
}

impl HostDataset {
    /// Moves images to `device` (uint8) and computes the normalisation statistics there.
    pub fn to_device(self, device: Device) -> Dataset {
        let s = self.shape;
        let dims = |n: usize| [n as i64, s.channels, s.height, s.width];
        let train_images = Tensor::from_slice(&self.train.images).reshape(dims(self.train.len)).to_device(device);
        let test_images = Tensor::from_slice(&self.test.images).reshape(dims(self.test.len)).to_device(device);
        let (mean, std) = channel_stats(&train_images);
        Dataset {
            name: self.name,
            shape: s,
            classes: self.classes,
            train_labels: Tensor::from_slice(&self.train.labels).to_device(device),
            test_labels: Tensor::from_slice(&self.test.labels).to_device(device),
            train_images,
            test_images,
            mean,
            std,
            augmentable: matches!(self.name, DatasetKind::Cifar10 | DatasetKind::Cifar100 | DatasetKind::TinyImagenet | DatasetKind::ImageFolder),
        }
    }
}

/// Per-channel mean/std (shape 1×C×1×1), in chunks so a large dataset needs no full float copy.
fn channel_stats(images: &Tensor) -> (Tensor, Tensor) {
    let n = images.size()[0];
    let c = images.size()[1];
    let dev = images.device();
    let mut sum = Tensor::zeros([c], (Kind::Double, dev));
    let mut sq = Tensor::zeros([c], (Kind::Double, dev));
    let chunk = 4096;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = images.narrow(0, start, len).to_kind(Kind::Double);
        sum += x.sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double);
        sq += (&x * &x).sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double);
        start += len;
    }
    let count = (n * images.size()[2] * images.size()[3]) as f64;
    let mean = &sum / count;
    let var = (&sq / count - &mean * &mean).clamp_min(1e-12);
    let std = var.sqrt();
    (mean.to_kind(Kind::Float).reshape([1, c, 1, 1]), std.to_kind(Kind::Float).reshape([1, c, 1, 1]))
}

/// Loads the dataset a step asks for onto `device` (ImageFolder through the default decoded cache).
pub fn load(spec: &DatasetSpec, device: Device) -> Result<Dataset> {
    Ok(load_cached(spec, device, custom_data::default_cache_dir().as_deref())?.0)
}

/// [`load`] with an explicit decoded-image cache folder (`None`: no cache), saying whether it hit.
pub fn load_cached(spec: &DatasetSpec, device: Device, cache: Option<&Path>) -> Result<(Dataset, CacheUse)> {
    let (host, used) = load_host_cached(spec, cache)?;
    let mut ds = host.to_device(device);
    if let Some(a) = spec.augment {
        ds.augmentable = a;
    }
    if let (Some(mean), Some(std)) = (&spec.mean, &spec.std) {
        let c = ds.shape.channels as usize;
        if mean.len() != c || std.len() != c {
            bail!("dataset.mean / dataset.std give {} / {} values, but the images have {c} channel{}", mean.len(), std.len(), if c == 1 { "" } else { "s" });
        }
        // Given on pixels scaled to [0, 1]; the loader normalises raw 0-255 values.
        let scaled = |v: &[f64]| Tensor::from_slice(&v.iter().map(|x| (x * 255.0) as f32).collect::<Vec<f32>>()).reshape([1, c as i64, 1, 1]).to_device(device);
        ds.mean = scaled(mean);
        ds.std = scaled(std);
    }
    Ok((ds, used))
}

/// The dataset's `path` does not exist on this machine. Typed, because it is this machine's
/// problem and not the sweep's (the files are on the other workers): the daemon reports such a
/// failure as node-local, and the job runs elsewhere. `path` is absolute (a relative one is
/// resolved against the working directory it was looked up in).
#[derive(Debug)]
pub struct DatasetMissing {
    pub dataset: String,
    pub path: PathBuf,
}

impl DatasetMissing {
    pub fn new(dataset: &str, path: &Path) -> DatasetMissing {
        let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf()) };
        DatasetMissing { dataset: dataset.to_string(), path }
    }
}

impl std::fmt::Display for DatasetMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dataset {}: {} does not exist on this machine (copy or mount the dataset there, or fix `path`)", self.dataset, self.path.display())
    }
}

impl std::error::Error for DatasetMissing {}

/// Decodes the dataset a step asks for, on the host (ImageFolder through the default cache).
pub fn load_host(spec: &DatasetSpec) -> Result<HostDataset> {
    Ok(load_host_cached(spec, custom_data::default_cache_dir().as_deref())?.0)
}

/// [`load_host`] with an explicit decoded-image cache folder.
pub fn load_host_cached(spec: &DatasetSpec, cache: Option<&Path>) -> Result<(HostDataset, CacheUse)> {
    let mut used = CacheUse::Off;
    if spec.path.is_none() {
        if let Some(u) = &spec.upload {
            bail!(
                "dataset {} is the upload {u}: the daemon fetches uploads from the coordinator; here (run-local) give the files' `path` instead",
                spec.name.as_str()
            );
        }
    }
    let path = || -> Result<PathBuf> {
        let p = spec.path.as_ref().ok_or_else(|| {
            anyhow!("dataset {} needs `path` (the folder holding its files) in [dataset]", spec.name.as_str())
        })?;
        let p = PathBuf::from(p);
        if !p.exists() {
            return Err(DatasetMissing::new(spec.name.as_str(), &p).into());
        }
        if !p.is_dir() {
            bail!("dataset {} path {} is not a directory: point `path` at the folder with the dataset's files", spec.name.as_str(), p.display());
        }
        Ok(p)
    };
    let ds = match spec.name {
        DatasetKind::Digits => load_digits()?,
        DatasetKind::Cifar10 => load_cifar(&path()?, false)?,
        DatasetKind::Cifar100 => load_cifar(&path()?, true)?,
        DatasetKind::Mnist => load_mnist(&path()?)?,
        DatasetKind::TinyImagenet => load_tiny_imagenet(&path()?)?,
        DatasetKind::ImageFolder => {
            path()?;
            let (ds, u) = custom_data::load_image_folder(spec, cache)?;
            used = u;
            ds
        }
        DatasetKind::Safetensors => {
            let p = spec.path.as_deref().ok_or_else(|| anyhow!("dataset safetensors needs `path`: the .safetensors file"))?;
            if !Path::new(p).exists() {
                return Err(DatasetMissing::new("safetensors", Path::new(p)).into());
            }
            custom_data::load_safetensors(Path::new(p))?
        }
    };
    if ds.classes < 2 {
        bail!("{}: the labels name {} class(es); a classifier needs at least 2", spec.name.as_str(), ds.classes);
    }
    ds.train.check(ds.shape, ds.classes, &format!("{} train split", spec.name.as_str()))?;
    ds.test.check(ds.shape, ds.classes, &format!("{} test split", spec.name.as_str()))?;
    Ok((ds, used))
}

/// The bundled UCI digits: 64 pixel values (0–16) and a label per CSV row.
pub fn load_digits() -> Result<HostDataset> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ).read_to_string(&mut text).context("decompressing the bundled digits")?;
    let mut images = Vec::with_capacity(1797 * 64);
    let mut labels = Vec::with_capacity(1797);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let vals: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("digits row {}: not numeric", i + 1))?;
        if vals.len() != 65 {
            bail!("digits row {}: {} values, expected 64 pixels + label", i + 1, vals.len());
        }
        images.extend(vals[..64].iter().map(|v| *v as u8));
        labels.push(vals[64] as i64);
    }
    let n = labels.len();
    if n <= DIGITS_TRAIN_ROWS {
        bail!("bundled digits hold {n} rows, expected 1797");
    }
    let split = DIGITS_TRAIN_ROWS * 64;
    Ok(HostDataset {
        name: DatasetKind::Digits,
        shape: InputShape { channels: 1, height: 8, width: 8 },
        classes: 10,
        train: HostSplit { images: images[..split].to_vec(), labels: labels[..DIGITS_TRAIN_ROWS].to_vec(), len: DIGITS_TRAIN_ROWS },
        test: HostSplit { images: images[split..].to_vec(), labels: labels[DIGITS_TRAIN_ROWS..].to_vec(), len: n - DIGITS_TRAIN_ROWS },
    })
}

/// Reads a file, gunzipping it when it is gzip (by magic bytes), trying `name` then `name.gz`.
fn read_maybe_gz(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    let p = if plain.exists() { plain } else if gz.exists() { gz } else {
        bail!("missing {} (or {name}.gz) in {}", name, dir.display());
    };
    let raw = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out).with_context(|| format!("gunzipping {}", p.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// CIFAR binary format: records of label byte(s) + 3072 bytes (1024 R, 1024 G, 1024 B).
/// CIFAR-10: `data_batch_1..5.bin` + `test_batch.bin`, 1 label byte. CIFAR-100: `train.bin` +
/// `test.bin`, coarse then fine label byte (the fine label is used). The files may sit in `dir`
/// or in its `cifar-10-batches-bin` / `cifar-100-binary` subfolder (the archives' layout).
pub fn load_cifar(dir: &Path, hundred: bool) -> Result<HostDataset> {
    let sub = dir.join(if hundred { "cifar-100-binary" } else { "cifar-10-batches-bin" });
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let (train_files, test_files): (Vec<String>, Vec<String>) = if hundred {
        (vec!["train.bin".into()], vec!["test.bin".into()])
    } else {
        ((1..=5).map(|i| format!("data_batch_{i}.bin")).collect(), vec!["test_batch.bin".into()])
    };
    let label_bytes = if hundred { 2 } else { 1 };
    let record = label_bytes + 3072;
    let read_split = |files: &[String]| -> Result<HostSplit> {
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for f in files {
            let raw = read_maybe_gz(&dir, f)?;
            if raw.is_empty() || raw.len() % record != 0 {
                bail!("{}: {} bytes is not a multiple of the {record}-byte CIFAR record; is this the binary (not python) version?", dir.join(f).display(), raw.len());
            }
            for r in raw.chunks_exact(record) {
                labels.push(r[label_bytes - 1] as i64);
                images.extend_from_slice(&r[label_bytes..]);
            }
        }
        let len = labels.len();
        Ok(HostSplit { images, labels, len })
    };
    Ok(HostDataset {
        name: if hundred { DatasetKind::Cifar100 } else { DatasetKind::Cifar10 },
        shape: InputShape { channels: 3, height: 32, width: 32 },
        classes: if hundred { 100 } else { 10 },
        train: read_split(&train_files)?,
        test: read_split(&test_files)?,
    })
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// MNIST IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…`), plain or gzip.
pub fn load_mnist(dir: &Path) -> Result<HostDataset> {
    let split = |prefix: &str| -> Result<(HostSplit, i64, i64)> {
        let img_name = format!("{prefix}-images-idx3-ubyte");
        let lab_name = format!("{prefix}-labels-idx1-ubyte");
        let img = read_maybe_gz(dir, &img_name)?;
        let lab = read_maybe_gz(dir, &lab_name)?;
        if img.len() < 16 || be_u32(&img, 0) != 0x0000_0803 {
            bail!("{img_name}: not an IDX3 uint8 image file (magic 0x00000803)");
        }
        if lab.len() < 8 || be_u32(&lab, 0) != 0x0000_0801 {
            bail!("{lab_name}: not an IDX1 uint8 label file (magic 0x00000801)");
        }
        let (n, h, w) = (be_u32(&img, 4) as usize, be_u32(&img, 8) as usize, be_u32(&img, 12) as usize);
        let nl = be_u32(&lab, 4) as usize;
        if n != nl || img.len() != 16 + n * h * w || lab.len() != 8 + n {
            bail!("{img_name}/{lab_name}: header says {n} images of {h}×{w} and {nl} labels, but the file sizes disagree (truncated download?)");
        }
        Ok((
            HostSplit { images: img[16..].to_vec(), labels: lab[8..].iter().map(|&l| l as i64).collect(), len: n },
            h as i64,
            w as i64,
        ))
    };
    let (train, h, w) = split("train")?;
    let (test, th, tw) = split("t10k")?;
    if (h, w) != (th, tw) {
        bail!("MNIST train images are {h}×{w} but test images {th}×{tw}");
    }
    Ok(HostDataset { name: DatasetKind::Mnist, shape: InputShape { channels: 1, height: h, width: w }, classes: 10, train, test })
}

fn decode_rgb64(path: &Path) -> Result<Vec<u8>> {
    let img = image::open(path).with_context(|| format!("decoding {}", path.display()))?.to_rgb8();
    let img = if img.dimensions() != (64, 64) {
        image::imageops::resize(&img, 64, 64, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    // HWC → CHW
    let raw = img.into_raw();
    let mut out = vec![0u8; 3 * 64 * 64];
    for (i, px) in raw.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * 4096 + i] = px[c];
        }
    }
    Ok(out)
}

/// Decodes images on all cores (JPEG decoding of 110k files is the slow part of this loader).
fn decode_all(files: &[(PathBuf, i64)]) -> Result<HostSplit> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16);
    let chunk = files.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || -> Result<Vec<u8>> {
                    let mut out = Vec::with_capacity(c.len() * 3 * 4096);
                    for (p, _) in c {
                        out.extend(decode_rgb64(p)?);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("image decoder thread panicked")))).collect()
    });
    let mut images = Vec::with_capacity(files.len() * 3 * 4096);
    for p in parts {
        images.extend(p?);
    }
    Ok(HostSplit { images, labels: files.iter().map(|(_, l)| *l).collect(), len: files.len() })
}

fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|e| matches!(e.to_string_lossy().to_ascii_lowercase().as_str(), "jpeg" | "jpg" | "png")).unwrap_or(false))
        .collect();
    v.sort();
    Ok(v)
}

/// TinyImageNet-200: `wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with
/// `val/val_annotations.txt` (file, wnid, box). Class index = line of the wnid in `wnids.txt`.
/// The labelled `val` split serves as the test set (the official test split has no labels).
pub fn load_tiny_imagenet(dir: &Path) -> Result<HostDataset> {
    let sub = dir.join("tiny-imagenet-200");
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let wnids_text = std::fs::read_to_string(dir.join("wnids.txt"))
        .with_context(|| format!("reading {}/wnids.txt (is `path` the tiny-imagenet-200 folder?)", dir.display()))?;
    let wnids: Vec<String> = wnids_text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    let class_of = |w: &str| wnids.iter().position(|x| x == w);
    let mut train = Vec::new();
    for (c, w) in wnids.iter().enumerate() {
        for p in list_images(&dir.join("train").join(w).join("images"))? {
            train.push((p, c as i64));
        }
    }
    let ann_path = dir.join("val").join("val_annotations.txt");
    let ann = std::fs::read_to_string(&ann_path).with_context(|| format!("reading {}", ann_path.display()))?;
    let mut val = Vec::new();
    for (i, line) in ann.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut f = line.split('\t');
        let (file, wnid) = match (f.next(), f.next()) {
            (Some(a), Some(b)) => (a.trim(), b.trim()),
            _ => bail!("{} line {}: expected `file<TAB>wnid<TAB>box`", ann_path.display(), i + 1),
        };
        let c = class_of(wnid).ok_or_else(|| anyhow!("{} line {}: wnid {wnid} is not in wnids.txt", ann_path.display(), i + 1))?;
        val.push((dir.join("val").join("images").join(file), c as i64));
    }
    Ok(HostDataset {
        name: DatasetKind::TinyImagenet,
        shape: InputShape { channels: 3, height: 64, width: 64 },
        classes: wnids.len() as i64,
        train: decode_all(&train)?,
        test: decode_all(&val)?,
    })
}

/// One epoch's draws: the shuffle order and, per position, crop offsets and flip bits.
pub struct EpochPlan {
    pub order: Tensor,
    /// Per sample: x offset, y offset in 0..=8, and flip (0/1); only when augmenting.
    pub crops: Option<Tensor>,
}

pub const CROP_PAD: i64 = 4;

impl Dataset {
    pub fn train_len(&self) -> i64 {
        self.train_images.size()[0]
    }
    pub fn test_len(&self) -> i64 {
        self.test_images.size()[0]
    }

    /// The epoch's order and augmentation draws, from (seed, epoch), uploaded in one copy each.
    pub fn epoch_plan(&self, seed: u64, epoch: u64, augment: bool) -> EpochPlan {
        let n = self.train_len() as usize;
        let dev = self.train_images.device();
        let order = Rng::derive(seed, "shuffle", epoch).permutation(n);
        let crops = (augment && self.augmentable).then(|| {
            let mut r = Rng::derive(seed, "augment", epoch);
            let mut v = Vec::with_capacity(n * 3);
            for _ in 0..n {
                v.push(r.below(2 * CROP_PAD as u64 + 1) as i64);
                v.push(r.below(2 * CROP_PAD as u64 + 1) as i64);
                v.push(r.below(2) as i64);
            }
            Tensor::from_slice(&v).reshape([n as i64, 3]).to_device(dev)
        });
        EpochPlan { order: Tensor::from_slice(&order).to_device(dev), crops }
    }

    /// The `pos`-th batch of an epoch: gathered, augmented and normalised on the device (float32).
    pub fn train_batch(&self, plan: &EpochPlan, pos: i64, batch: i64, channels_last: bool) -> (Tensor, Tensor) {
        let idx = plan.order.narrow(0, pos * batch, batch);
        let x = self.train_images.index_select(0, &idx);
        let y = self.train_labels.index_select(0, &idx);
        let x = match &plan.crops {
            Some(c) => crop_flip(&x, &c.narrow(0, pos * batch, batch)),
            None => x,
        };
        (self.normalise(&x, channels_last), y)
    }

    /// uint8 → float, per-channel normalisation; optionally channels-last.
    pub fn normalise(&self, x: &Tensor, channels_last: bool) -> Tensor {
        let x = if channels_last { super::models::to_channels_last(x) } else { x.shallow_clone() };
        (x.to_kind(Kind::Float) - &self.mean) / &self.std
    }
}

/// Random crop with zero padding and horizontal flip for a whole batch: pad, then two gathers
/// whose indices carry each image's offsets (and the reversed column order when flipped).
pub fn crop_flip(x: &Tensor, draws: &Tensor) -> Tensor {
    let (b, c, h, w) = x.size4().expect("image batch is 4-D");
    let dev = x.device();
    let padded = x.constant_pad_nd([CROP_PAD, CROP_PAD, CROP_PAD, CROP_PAD]);
    let ox = draws.select(1, 0).view([b, 1]);
    let oy = draws.select(1, 1).view([b, 1]);
    let flip = draws.select(1, 2).view([b, 1]);
    let ar_h = Tensor::arange(h, (Kind::Int64, dev)).view([1, h]);
    let ar_w = Tensor::arange(w, (Kind::Int64, dev)).view([1, w]);
    let rows = (&oy + &ar_h).view([b, 1, h, 1]).expand([b, c, h, w + 2 * CROP_PAD], false);
    // flipped: column j reads w-1-j
    let cols_idx = &ar_w + &flip * (&ar_w * (-2i64) + (w - 1));
    let cols = (&ox + cols_idx).view([b, 1, 1, w]).expand([b, c, h, w], false);
    padded.gather(2, &rows, false).gather(3, &cols, false)
}
