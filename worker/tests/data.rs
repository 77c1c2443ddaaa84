//! The dataset loaders on small files written in the exact on-disk formats, and the on-device
//! crop/flip.

use lth_sweep::{DatasetKind, DatasetSpec};
use lth_worker::engine::data::{self, crop_flip};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn spec(name: DatasetKind, dir: &Path) -> DatasetSpec {
    DatasetSpec::new(name, Some(dir.to_string_lossy().into_owned()))
}

/// One CIFAR record: label byte(s), then 1024 R, 1024 G, 1024 B bytes (R = value, G = value+1, ...).
fn cifar_record(labels: &[u8], value: u8) -> Vec<u8> {
    let mut r = labels.to_vec();
    for c in 0..3u8 {
        r.extend(std::iter::repeat_n(value.wrapping_add(c), 1024));
    }
    r
}

#[test]
fn cifar10_binary_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&dir).unwrap();
    for i in 1..=5u8 {
        let mut f = std::fs::File::create(dir.join(format!("data_batch_{i}.bin"))).unwrap();
        f.write_all(&cifar_record(&[i], 10 * i)).unwrap();
        f.write_all(&cifar_record(&[9], 200)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_record(&[4], 7)).unwrap();
    let ds = data::load_host(&spec(DatasetKind::Cifar10, tmp.path())).unwrap();
    assert_eq!((ds.train.len, ds.test.len, ds.classes), (10, 1, 10));
    assert_eq!(ds.train.labels[..4], [1, 9, 2, 9]);
    // CHW: first 1024 bytes are the red plane
    assert_eq!((ds.train.images[0], ds.train.images[1024], ds.train.images[2048]), (10, 11, 12));
    assert_eq!(ds.test.labels, vec![4]);
    let on = ds.to_device(Device::Cpu);
    assert_eq!(on.train_images.size(), vec![10, 3, 32, 32]);
    assert_eq!(on.train_images.kind(), Kind::Uint8);
}

#[test]
fn cifar100_uses_the_fine_label_and_rejects_torn_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("train.bin"), [cifar_record(&[3, 77], 1), cifar_record(&[4, 99], 2)].concat()).unwrap();
    std::fs::write(tmp.path().join("test.bin"), cifar_record(&[1, 5], 3)).unwrap();
    let ds = data::load_host(&spec(DatasetKind::Cifar100, tmp.path())).unwrap();
    assert_eq!((ds.train.labels.clone(), ds.test.labels.clone(), ds.classes), (vec![77, 99], vec![5], 100));
    std::fs::write(tmp.path().join("test.bin"), &cifar_record(&[1, 5], 3)[..100]).unwrap();
    let e = data::load_host(&spec(DatasetKind::Cifar100, tmp.path())).err().unwrap();
    assert!(format!("{e:#}").contains("not a multiple"), "{e:#}");
}

fn idx_images(n: u32, h: u32, w: u32, fill: impl Fn(u32) -> u8) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for x in [n, h, w] {
        v.extend(x.to_be_bytes());
    }
    for i in 0..n {
        v.extend(std::iter::repeat_n(fill(i), (h * w) as usize));
    }
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend((labels.len() as u32).to_be_bytes());
    v.extend(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn mnist_idx_plain_and_gzip() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("train-images-idx3-ubyte.gz"), gz(&idx_images(3, 28, 28, |i| i as u8 * 50))).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte.gz"), gz(&idx_labels(&[5, 0, 4]))).unwrap();
    std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(2, 28, 28, |_| 255)).unwrap();
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_labels(&[7, 2])).unwrap();
    let ds = data::load_host(&spec(DatasetKind::Mnist, d)).unwrap();
    assert_eq!((ds.train.len, ds.test.len, ds.shape.height, ds.shape.channels), (3, 2, 28, 1));
    assert_eq!(ds.train.labels, vec![5, 0, 4]);
    assert_eq!(ds.train.images[784 * 2], 100);
    std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx_labels(&[7, 12])).unwrap();
    let e = data::load_host(&spec(DatasetKind::Mnist, d)).err().unwrap();
    assert!(format!("{e:#}").contains("label 12"), "{e:#}");
}

#[test]
fn tiny_imagenet_folder_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("tiny-imagenet-200");
    let wnids = ["n01443537", "n01629819"];
    std::fs::create_dir_all(d.join("val/images")).unwrap();
    std::fs::write(d.join("wnids.txt"), wnids.join("\n") + "\n").unwrap();
    for (c, w) in wnids.iter().enumerate() {
        let img_dir = d.join("train").join(w).join("images");
        std::fs::create_dir_all(&img_dir).unwrap();
        for k in 0..2 {
            let px = image::RgbImage::from_pixel(64, 64, image::Rgb([200 * c as u8, 100, 30]));
            px.save(img_dir.join(format!("{w}_{k}.JPEG"))).unwrap();
        }
    }
    image::RgbImage::from_pixel(64, 64, image::Rgb([0, 100, 30])).save(d.join("val/images/val_0.JPEG")).unwrap();
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 100, 30])).save(d.join("val/images/val_1.JPEG")).unwrap();
    std::fs::write(d.join("val/val_annotations.txt"), "val_0.JPEG\tn01443537\t0\t0\t63\t63\nval_1.JPEG\tn01629819\t1\t2\t50\t60\n").unwrap();
    let ds = data::load_host(&spec(DatasetKind::TinyImagenet, tmp.path())).unwrap();
    assert_eq!((ds.train.len, ds.test.len, ds.classes, ds.shape.height), (4, 2, 2, 64));
    assert_eq!(ds.train.labels, vec![0, 0, 1, 1]);
    assert_eq!(ds.test.labels, vec![0, 1]);
    // JPEG is lossy: the red plane of the second class is ≈ 200, its green plane ≈ 100
    let red = ds.train.images[2 * 3 * 4096] as i32;
    let green = ds.train.images[2 * 3 * 4096 + 4096] as i32;
    assert!((red - 200).abs() <= 6 && (green - 100).abs() <= 6, "{red} {green}");
}

#[test]
fn bundled_digits_split() {
    let ds = data::load_digits().unwrap();
    assert_eq!((ds.train.len, ds.test.len, ds.shape.height), (1500, 297, 8));
    assert!(ds.train.images.iter().all(|&v| v <= 16));
    let mut seen = [0; 10];
    for &l in &ds.test.labels {
        seen[l as usize] += 1;
    }
    assert!(seen.iter().all(|&c| c > 20), "every digit appears in the test split: {seen:?}");
}

#[test]
fn missing_path_says_what_to_set() {
    let e = data::load_host(&DatasetSpec::new(DatasetKind::Cifar10, None)).err().unwrap();
    assert!(e.to_string().contains("needs `path`"), "{e}");
    let tmp = tempfile::tempdir().unwrap();
    let e = data::load_host(&spec(DatasetKind::Cifar10, tmp.path())).err().unwrap();
    assert!(e.to_string().contains("data_batch_1.bin"), "{e}");
}

#[test]
fn crop_and_flip_are_exact_gathers() {
    // one 1×4×4 image with values 1..=16
    let x = Tensor::arange_start(1, 17, (Kind::Uint8, Device::Cpu)).reshape([1, 1, 4, 4]);
    let centred = crop_flip(&x, &Tensor::from_slice(&[4i64, 4, 0]).reshape([1, 3]));
    assert!(centred.equal(&x));
    let flipped = crop_flip(&x, &Tensor::from_slice(&[4i64, 4, 1]).reshape([1, 3]));
    assert!(flipped.equal(&x.flip([3])));
    // shifted right by 1 column and down by 2 rows of zero padding (offsets 3, 2)
    let shifted = crop_flip(&x, &Tensor::from_slice(&[3i64, 2, 0]).reshape([1, 3]));
    let expect = Tensor::from_slice(&[0u8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 0, 5, 6, 7]).reshape([1, 1, 4, 4]);
    assert!(shifted.equal(&expect), "{shifted}");
}

#[test]
fn epoch_plans_are_seeded() {
    let ds = data::load_digits().unwrap().to_device(Device::Cpu);
    let a = ds.epoch_plan(1, 0, true);
    let b = ds.epoch_plan(1, 0, true);
    let c = ds.epoch_plan(1, 1, true);
    assert!(a.order.equal(&b.order) && !a.order.equal(&c.order));
    assert!(a.crops.is_none(), "digits are never cropped or flipped");
    let (x, y) = ds.train_batch(&a, 0, 32, false);
    assert_eq!((x.size(), y.size(), x.kind()), (vec![32, 1, 8, 8], vec![32], Kind::Float));
}
