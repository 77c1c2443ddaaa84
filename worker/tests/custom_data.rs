//! Your own data, on small files written in the exact formats: an ImageFolder tree of PNG and JPEG
//! files (torchvision's class order and file order, resizing, grayscale, the decoded cache and its
//! hit on the second load) and a safetensors tensor file; given mean/std and augmentation flags.

use lth_sweep::{DatasetKind, DatasetSpec, Resolution};
use lth_worker::engine::data::{self, CacheUse};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn folder_spec(root: &Path, h: u32, w: u32) -> DatasetSpec {
    DatasetSpec { resolution: Some(Resolution { height: h, width: w }), ..DatasetSpec::new(DatasetKind::ImageFolder, Some(root.to_string_lossy().into_owned())) }
}

fn png(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn jpeg(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save_with_format(path, image::ImageFormat::Jpeg).unwrap();
}

/// train/{cat,dog,emu}, val/{cat,dog}: PNGs and JPEGs of several sizes, one in a sub-folder.
fn tree(root: &Path) {
    png(&root.join("train/dog/b.png"), 8, 8, [0, 0, 250]);
    jpeg(&root.join("train/dog/a.JPG"), 16, 12, [0, 250, 0]);
    png(&root.join("train/cat/z.png"), 4, 4, [250, 0, 0]);
    png(&root.join("train/cat/sub/a.png"), 6, 3, [10, 20, 30]);
    png(&root.join("train/emu/x.png"), 4, 4, [1, 2, 3]);
    std::fs::write(root.join("train/cat/notes.txt"), "not an image: skipped, as torchvision skips it").unwrap();
    png(&root.join("val/dog/q.png"), 4, 4, [0, 0, 200]);
    jpeg(&root.join("val/cat/r.jpeg"), 4, 4, [200, 0, 0]);
}

#[test]
fn image_folder_reads_like_torchvision_and_caches_by_content() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pets");
    tree(&root);
    let cache = tmp.path().join("cache");
    let spec = folder_spec(&root, 4, 4);
    let (a, used) = data::load_host_cached(&spec, Some(&cache)).unwrap();
    let CacheUse::Miss(file) = used else { panic!("the first load decodes: {used:?}") };
    assert!(file.is_file() && file.starts_with(&cache));
    assert_eq!((a.classes, a.shape.channels, a.shape.height, a.shape.width), (3, 3, 4, 4));
    // Classes sorted (cat 0, dog 1, emu 2); files by folder then name: cat/z before cat/sub/a.
    assert_eq!(a.train.labels, vec![0, 0, 1, 1, 2]);
    assert_eq!(a.test.labels, vec![0, 1], "val is labelled with train's classes");
    let px = |split: &data::HostSplit, i: usize, c: usize| split.images[i * 48 + c * 16 + 5];
    assert_eq!((px(&a.train, 0, 0), px(&a.train, 0, 1), px(&a.train, 0, 2)), (250, 0, 0), "cat/z.png, CHW");
    assert_eq!((px(&a.train, 1, 0), px(&a.train, 1, 2)), (10, 30), "cat/sub/a.png resized from 6×3");
    let green = px(&a.train, 2, 1) as i32; // dog/a.JPG (upper-case extension, lossy, resized)
    assert!((green - 250).abs() <= 6, "{green}");
    assert_eq!(px(&a.train, 3, 2), 250, "dog/b.png");

    // The second load reads the cache: same tensors, nothing decoded.
    let (b, used) = data::load_host_cached(&spec, Some(&cache)).unwrap();
    assert_eq!(used, CacheUse::Hit(file.clone()));
    assert_eq!((&b.train.images, &b.train.labels, &b.test.images), (&a.train.images, &a.train.labels, &a.test.images));
    // Another resolution, or a changed image, is another key.
    let (c, used) = data::load_host_cached(&folder_spec(&root, 2, 3), Some(&cache)).unwrap();
    assert!(matches!(used, CacheUse::Miss(ref f) if f != &file), "{used:?}");
    assert_eq!((c.shape.height, c.shape.width, c.train.images.len()), (2, 3, 5 * 3 * 6));
    png(&root.join("train/emu/x.png"), 4, 4, [9, 9, 9]);
    let (d, used) = data::load_host_cached(&spec, Some(&cache)).unwrap();
    assert!(matches!(used, CacheUse::Miss(ref f) if f != &file), "{used:?}");
    assert_eq!(d.train.images[4 * 48], 9);
    // A torn cache file is decoded again, not trusted.
    std::fs::write(&file, b"torn").unwrap();
    png(&root.join("train/emu/x.png"), 4, 4, [1, 2, 3]);
    let (e, used) = data::load_host_cached(&spec, Some(&cache)).unwrap();
    assert_eq!(used, CacheUse::Miss(file.clone()));
    assert_eq!(e.train.images, a.train.images);

    // Grayscale, and no cache at all.
    let gray = DatasetSpec { channels: Some(1), ..spec.clone() };
    let (g, used) = data::load_host_cached(&gray, None).unwrap();
    assert_eq!((used, g.shape.channels, g.train.images.len()), (CacheUse::Off, 1, 5 * 16));
    // ITU-R 601 luma of (250, 0, 0) is about 75.
    assert!((g.train.images[5] as i32 - 75).abs() <= 2, "{}", g.train.images[5]);
}

#[test]
fn image_folder_mistakes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("d");
    tree(&root);
    let spec = folder_spec(&root, 4, 4);
    let err = |spec: &DatasetSpec| format!("{:#}", data::load_host_cached(spec, None).err().unwrap());
    png(&root.join("val/owl/o.png"), 4, 4, [0, 0, 0]);
    assert!(err(&spec).contains("val/owl is not a class of the train split"), "{}", err(&spec));
    std::fs::remove_dir_all(root.join("val/owl")).unwrap();
    std::fs::create_dir_all(root.join("train/empty")).unwrap();
    assert!(err(&spec).contains("train/empty holds no .png/.jpg/.jpeg image"), "{}", err(&spec));
    std::fs::remove_dir_all(root.join("train/empty")).unwrap();
    std::fs::write(root.join("train/emu/y.bmp"), b"BM").unwrap();
    assert!(err(&spec).contains("decodes PNG and JPEG images only"), "{}", err(&spec));
    std::fs::remove_file(root.join("train/emu/y.bmp")).unwrap();
    std::fs::write(root.join("train/emu/broken.png"), b"\x89PNG not really").unwrap();
    assert!(err(&spec).contains("broken.png"), "{}", err(&spec));
    std::fs::remove_file(root.join("train/emu/broken.png")).unwrap();
    std::fs::rename(root.join("val"), root.join("elsewhere")).unwrap();
    assert!(err(&spec).contains("no val/ (or test/) folder"), "{}", err(&spec));
    std::fs::rename(root.join("elsewhere"), root.join("test")).unwrap();
    assert!(data::load_host_cached(&spec, None).is_ok(), "test/ serves as the test split too");
}

fn write_tensors(path: &Path, tensors: &[(&str, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

#[test]
fn safetensors_file_of_nhwc_images() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("mine.safetensors");
    // 3 train images of 2×4 RGB pixels whose values count 0..72 in N×H×W×C order.
    let train = Tensor::arange(3 * 2 * 4 * 3, (Kind::Int64, Device::Cpu)).reshape([3, 2, 4, 3]).to_kind(Kind::Uint8);
    let test = Tensor::full([2, 2, 4, 3], 7, (Kind::Uint8, Device::Cpu));
    write_tensors(
        &f,
        &[
            ("train_images", train.shallow_clone()),
            ("train_labels", Tensor::from_slice(&[0u8, 2, 1])),
            ("test_images", test),
            ("test_labels", Tensor::from_slice(&[1i32, 0])),
        ],
    );
    let spec = DatasetSpec::new(DatasetKind::Safetensors, Some(f.to_string_lossy().into_owned()));
    let ds = data::load_host(&spec).unwrap();
    assert_eq!((ds.classes, ds.shape.channels, ds.shape.height, ds.shape.width), (3, 3, 2, 4));
    assert_eq!((ds.train.labels.clone(), ds.test.labels.clone()), (vec![0, 2, 1], vec![1, 0]));
    // NHWC → NCHW: channel c of image 1 at (y=1, x=2) is element ((1·2 + 1)·4 + 2)·3 + c.
    let at = |n: usize, c: usize, y: usize, x: usize| ds.train.images[((n * 3 + c) * 2 + y) * 4 + x];
    assert_eq!(at(1, 2, 1, 2), (((2 + 1) * 4 + 2) * 3 + 2) as u8);
    let on = data::load(&spec, Device::Cpu).unwrap();
    assert_eq!(on.train_images.size(), vec![3, 3, 2, 4]);
    assert!(!on.augmentable, "tensor files are not augmented unless the sweep says so");

    // One-channel N×H×W images, and the mistakes people make.
    write_tensors(
        &f,
        &[
            ("train_images", Tensor::zeros([4, 5, 5], (Kind::Uint8, Device::Cpu))),
            ("train_labels", Tensor::from_slice(&[0i64, 1, 0, 1])),
            ("test_images", Tensor::zeros([1, 5, 5], (Kind::Uint8, Device::Cpu))),
            ("test_labels", Tensor::from_slice(&[1i64])),
        ],
    );
    assert_eq!(data::load_host(&spec).unwrap().shape.channels, 1);
    let err = |t: &[(&str, Tensor)]| {
        write_tensors(&f, t);
        format!("{:#}", data::load_host(&spec).err().unwrap())
    };
    let y = || Tensor::from_slice(&[0i64, 1]);
    let x = || Tensor::zeros([2, 4, 4, 3], (Kind::Uint8, Device::Cpu));
    let e = err(&[("train_images", x()), ("train_labels", y()), ("test_images", x())]);
    assert!(e.contains("no tensor \"test_labels\""), "{e}");
    let e = err(&[("train_images", x().to_kind(Kind::Float)), ("train_labels", y()), ("test_images", x()), ("test_labels", y())]);
    assert!(e.contains("must be uint8") && e.contains("torch.uint8"), "{e}");
    let nchw = Tensor::zeros([2, 3, 8, 8], (Kind::Uint8, Device::Cpu));
    let e = err(&[("train_images", nchw), ("train_labels", y()), ("test_images", x()), ("test_labels", y())]);
    assert!(e.contains("not N×C×H×W") && e.contains("permute"), "{e}");
    let e = err(&[("train_images", x()), ("train_labels", Tensor::from_slice(&[0i64, 1, 1])), ("test_images", x()), ("test_labels", y())]);
    assert!(e.contains("3 labels for 2 images"), "{e}");
    let e = err(&[("train_images", x()), ("train_labels", Tensor::from_slice(&[0i64, 0])), ("test_images", x()), ("test_labels", Tensor::from_slice(&[0i64, 0]))]);
    assert!(e.contains("at least 2"), "{e}");
}

#[test]
fn given_mean_std_and_augmentation_flags_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pets");
    tree(&root);
    let base = folder_spec(&root, 4, 4);
    let ds = data::load_cached(&base, Device::Cpu, None).unwrap().0;
    assert!(ds.augmentable, "image folders are augmented by default");
    let given = DatasetSpec { mean: Some(vec![0.5, 0.25, 0.0]), std: Some(vec![0.2, 0.1, 1.0]), augment: Some(false), ..base.clone() };
    let ds = data::load_cached(&given, Device::Cpu, None).unwrap().0;
    assert!(!ds.augmentable);
    let mean: Vec<f32> = Vec::try_from(&ds.mean.flatten(0, -1)).unwrap();
    let std: Vec<f32> = Vec::try_from(&ds.std.flatten(0, -1)).unwrap();
    assert_eq!((mean, std), (vec![127.5, 63.75, 0.0], vec![51.0, 25.5, 255.0]), "given on [0, 1] pixels, applied to 0-255 values");
    let wrong = DatasetSpec { mean: Some(vec![0.5]), std: Some(vec![0.2]), ..base };
    let e = data::load_cached(&wrong, Device::Cpu, None).err().unwrap().to_string();
    assert!(e.contains("images have 3 channels"), "{e}");
}

/// Benchmark (not a test; BENCHMARKS.md): loading an ImageFolder of 5,000 64×64 JPEGs with no
/// cache, on a cold cache (hash + decode + write) and on a warm one (hash + read).
///     cargo nextest run -p lth-worker --run-ignored only -E 'test(image_folder_cache_benchmark)' --no-capture
#[test]
#[ignore]
fn image_folder_cache_benchmark() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("noise");
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let t = std::time::Instant::now();
    for (split, n) in [("train", 4000), ("val", 1000)] {
        for c in 0..10 {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n / 10 {
                let img = image::RgbImage::from_fn(64, 64, |_, _| {
                    let v = next();
                    image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
                });
                img.save(dir.join(format!("{i:04}.jpg"))).unwrap();
            }
        }
    }
    println!("wrote 5000 JPEGs in {:.1} s", t.elapsed().as_secs_f64());
    let spec = folder_spec(&root, 64, 64);
    let cache = tmp.path().join("cache");
    let time = |cache: Option<&Path>| {
        let t = std::time::Instant::now();
        let (_, used) = data::load_host_cached(&spec, cache).unwrap();
        (t.elapsed().as_secs_f64(), used)
    };
    let (none, _) = time(None);
    let (cold, u1) = time(Some(&cache));
    let (warm, u2) = time(Some(&cache));
    assert!(matches!(u1, CacheUse::Miss(_)) && matches!(u2, CacheUse::Hit(_)));
    println!(
        "threads {} | no cache {none:.2} s | cold cache {cold:.2} s | warm cache {warm:.2} s | decode / warm = {:.1}x",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        none / warm
    );
}
