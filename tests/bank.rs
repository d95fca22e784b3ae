//! The memory bank's feature extractor through tract against torch (the workstation's
//! `export-extractor --reference`), and a bank built from real photos.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use ndarray_npy::read_npy;

use maeday_edge::bank::features::FeatureExtractor;
use maeday_edge::bank::memory::{coreset, Features, MemoryBank};
use maeday_edge::detect::preprocess::load_image;
use maeday_edge::model::bundled::default_extractor_dir;

fn reference(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name);
    let a: ArrayD<f32> = read_npy(p).unwrap();
    a.iter().copied().collect()
}

#[test]
fn tract_extracts_the_same_patch_features_as_torch() {
    let ex = FeatureExtractor::open(&default_extractor_dir()).unwrap();
    let f = ex.features(&reference("extractor-input.npy")).unwrap();
    assert_eq!((f.rows(), f.dim), (28 * 28, 152));
    // torch's [1, 152, 28, 28], channels first.
    let want = reference("extractor-features.npy");
    let mut worst = 0f32;
    for p in 0..784 {
        for c in 0..152 {
            worst = worst.max((f.row(p)[c] - want[c * 784 + p]).abs());
        }
    }
    assert!(worst <= 1e-4, "tract vs torch max |diff| {worst}");
}

#[test]
fn a_bank_of_one_photo_knows_it_and_not_another() {
    let ex = FeatureExtractor::open(&default_extractor_dir()).unwrap();
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/samples");
    let good = ex
        .features_of(&load_image(&samples.join("coffee.png")).unwrap())
        .unwrap();
    let keep = coreset(&good, 0.25, 64, 0);
    assert_eq!(keep.len(), 196);
    let bank = MemoryBank::new(good.select(&keep)).unwrap();
    // The enrolled photo is close to its own coreset; a different photo is far.
    let mean = |f: &Features| {
        let d = bank.nearest(f).unwrap();
        d.iter().sum::<f32>() / d.len() as f32
    };
    let same = mean(&good);
    let other = mean(
        &ex.features_of(&load_image(&samples.join("camera.png")).unwrap())
            .unwrap(),
    );
    assert!(other > 2.0 * same, "same photo {same}, other photo {other}");
}

#[test]
fn a_tampered_extractor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = default_extractor_dir();
    for f in ["extractor.toml", "efficientnet-lite0-patches.onnx"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let graph = tmp.path().join("efficientnet-lite0-patches.onnx");
    let mut bytes = std::fs::read(&graph).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&graph, bytes).unwrap();
    let err = FeatureExtractor::open(tmp.path())
        .err()
        .expect("must be refused");
    assert!(format!("{err:#}").contains("sha256"), "{err:#}");
}

#[test]
fn bank_maps_match_the_numpy_reference() {
    // torch's features of coins.png; the bank holds the top half of the grid's rows, the
    // queries are all of them (models/workstation/bankref.py wrote the expected map).
    let f = reference("extractor-features.npy");
    let (d, cells) = (152, 28 * 28);
    let rows: Vec<f32> = (0..cells)
        .flat_map(|p| (0..d).map(move |c| (c, p)))
        .map(|(c, p)| f[c * cells + p])
        .collect();
    let all = Features::new(d, rows).unwrap();
    let top: Vec<usize> = (0..cells / 2).collect();
    let bank = MemoryBank::new(all.select(&top)).unwrap();
    let mut map = maeday_edge::detect::eq1::AnomalyMap::zeros(0, 0);
    maeday_edge::bank::scoring::bank_map(
        &all,
        28,
        224,
        &bank,
        &maeday_edge::bank::scoring::bank_kernel(),
        &mut map,
        &mut Vec::new(),
    )
    .unwrap();
    let want = reference("bank-map.npy");
    assert_eq!(map.data.len(), want.len());
    let top = want.iter().copied().fold(0f32, f32::max);
    let worst = map
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(top > 10.0, "the reference has real distances ({top})");
    assert!(worst <= 1e-4 * top, "max |diff| {worst} of {top}");
    // The top half is in the bank: distance 0 there before smoothing spreads the rest in.
    assert!(map.data[10 * 224 + 100] < 0.05 * top);
}
