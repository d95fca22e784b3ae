//! Fusion decided from good frames only (issue 20 part 3): a real `enroll` of conveyor
//! frames stores every scorer's image score of held-out good views in `bank.toml`
//! (`[maeday_pixel.good]`: leave one out with several frames, the augmented views with one),
//! the bank loads with them, and a `bank.toml` whose scores do not fit is refused with the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use image::codecs::gif::GifDecoder;
use image::AnimationDecoder;

mod common;
use common::repo;

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");

/// Enroll the clip's empty-belt frames `frames` into `dir/bank`.
fn enroll(dir: &Path, frames: &[usize]) -> PathBuf {
    let file = std::fs::File::open(repo().join("demo/conveyor.gif")).unwrap();
    let clip: Vec<_> = GifDecoder::new(std::io::BufReader::new(file))
        .unwrap()
        .into_frames()
        .map(|f| image::DynamicImage::ImageRgba8(f.unwrap().into_buffer()).to_rgb8())
        .collect();
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    for &i in frames {
        clip[i].save(good.join(format!("{i:02}.png"))).unwrap();
    }
    let bank = dir.join("bank");
    let o = Command::new(BIN)
        .args(["enroll", "--masks", "2", "--threads", "1", "--good"])
        .arg(&good)
        .arg("--out")
        .arg(&bank)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "enroll failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bank
}

fn good_of(bank: &Path) -> maeday_edge::detect::good_stats::GoodScores {
    let stored = maeday_edge::bank::store::StoredBank::load(bank).unwrap();
    stored.pixel_scorer().unwrap().good.unwrap()
}

#[test]
fn enrollment_keeps_held_out_good_scores_and_refuses_tampered_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let bank = enroll(&tmp.path().join("four"), &[0, 26, 30, 34]);
    let g = good_of(&bank);
    assert_eq!(g.how, "leave-one-out");
    assert_eq!(g.maeday.len(), 4, "{g:?}");
    assert!(g.check().is_ok(), "{g:?}");
    // Held-out frames are not memorised: the bank's maps of them are not all zero.
    assert!(g.bank.iter().any(|s| *s > 0.0), "{g:?}");

    // One frame: its zoomed view and the brightness and rotation views (1 + 2 + 2).
    let one = enroll(&tmp.path().join("one"), &[0]);
    let g1 = good_of(&one);
    assert_eq!(
        (g1.how.as_str(), g1.maeday_norm.len()),
        ("views", 5),
        "{g1:?}"
    );
    // Its thresholds are calibrated on all five views, not on the zoomed view alone (which
    // gave thresholds most new good frames crossed): the bank's image threshold (its
    // standardised units, the good scores' units) is at least the 4th of the five scores.
    let stored = maeday_edge::bank::store::StoredBank::load(&one).unwrap();
    assert_eq!(stored.meta.held_out, "zoomed-brightness-rotated-views");
    let mut b = g1.bank.clone();
    b.sort_by(f32::total_cmp);
    let t = stored.meta.thresholds.bank.image;
    assert!(t >= b[3] && t >= g1.bank[0], "threshold {t}, views {b:?}");

    // Drop one of the bank's scores: the counts differ, the bank is refused by the key.
    let toml_path = bank.join("bank.toml");
    let meta = std::fs::read_to_string(&toml_path).unwrap();
    let mut doc: toml::Value = toml::from_str(&meta).unwrap();
    let scores = doc["maeday_pixel"]["good"]["bank"].as_array_mut().unwrap();
    scores.pop();
    std::fs::write(&toml_path, toml::to_string(&doc).unwrap()).unwrap();
    let e = maeday_edge::bank::store::StoredBank::load(&bank).unwrap_err();
    assert!(format!("{e:#}").contains("maeday_pixel.good.bank"), "{e:#}");
}
