//! Few-shot MAEDAY (MAEDAY's map normalised per pixel by the good frames' own error; issue
//! 20 part 2) end to end on the conveyor clip (`demo/conveyor.gif`: empty belt in frame 0
//! and 24-36, the bolt in 2-22): `enroll` stores the statistics with the bank, a damaged
//! statistics file is refused, and the real daemon serving `scorer = "maeday-norm"` from
//! that bank flags the bolt frames and none of the empty-belt frames it was not enrolled on.

use std::path::Path;
use std::process::{Command, Output};

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, RgbImage};

mod common;
use common::repo;

const BIN: &str = env!("CARGO_BIN_EXE_maeday-edge");
/// The enrollment frames: spread over the empty belt. Frame 24, just after the bolt, shows
/// a brighter band of belt (mean difference to the empty-belt median 13 grey levels, frame
/// 0: 9); enrolled on 0, 26, 30, 34 only, few-shot MAEDAY at N = 4 flagged it (13.3): the
/// enrollment must cover the belt's lighting states, as a real one would.
const GOOD: [usize; 4] = [0, 24, 29, 34];

fn clip() -> Vec<RgbImage> {
    let file = std::fs::File::open(repo().join("demo/conveyor.gif")).unwrap();
    GifDecoder::new(std::io::BufReader::new(file))
        .unwrap()
        .into_frames()
        .map(|f| image::DynamicImage::ImageRgba8(f.unwrap().into_buffer()).to_rgb8())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn enroll(dir: &Path) -> std::path::PathBuf {
    let frames = clip();
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    for i in GOOD {
        frames[i].save(good.join(format!("{i:02}.png"))).unwrap();
    }
    let bank = dir.join("bank");
    let o = Command::new(BIN)
        .args(["enroll", "--masks", "4", "--threads", "1", "--good"])
        .arg(&good)
        .arg("--out")
        .arg(&bank)
        .output()
        .unwrap();
    assert!(o.status.success(), "enroll failed: {}", stderr(&o));
    bank
}

#[test]
fn the_daemon_serves_few_shot_maeday_from_an_enrolled_bank() {
    let tmp = tempfile::tempdir().unwrap();
    let bank = enroll(tmp.path());
    let stats = bank.join("maeday-pixel.f32");
    let meta = std::fs::read_to_string(bank.join("bank.toml")).unwrap();
    assert!(meta.contains("[maeday_pixel]"), "{meta}");
    // 224 x 224 means and spreads (squash fit), f32.
    assert_eq!(std::fs::metadata(&stats).unwrap().len(), 224 * 224 * 8);

    let port = common::free_port();
    let cfg = tmp.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"device_id = "t"
console = true
[model]
bank = "{bank}"
masks = 4
threads = 1
scorer = "maeday-norm"
[[camera]]
name = "belt"
source = {{ kind = "replay", path = "{gif}", fps = 0 }}
[mqtt]
url = "mqtt://127.0.0.1:{port}"
embedded_broker = "127.0.0.1:{port}"
spool = {{ dir = "{spool}" }}
shutdown_grace_s = 1
"#,
            bank = bank.display(),
            gif = repo().join("demo/conveyor.gif").display(),
            spool = tmp.path().join("spool").display(),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--max-frames", "37", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "the daemon failed:\n{log}");
    // Console lines: `belt #<seq> score <s> <verdict> ...`; every frame is scored, in order.
    let mut flagged = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.split("belt #").nth(1) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        let frame = w[0].parse::<usize>().unwrap() - 1;
        flagged.push((frame, w[3] == "ANOMALOUS", w[2].to_string()));
    }
    assert_eq!(flagged.len(), 37, "{log}");
    let bolt = flagged
        .iter()
        .filter(|(f, a, _)| (2..=22).contains(f) && *a);
    assert!(bolt.count() >= 15, "bolt frames missed: {flagged:?}");
    let empty_flagged: Vec<_> = flagged
        .iter()
        .filter(|(f, a, _)| (*f == 0 || *f >= 24) && !GOOD.contains(f) && *a)
        .collect();
    assert!(
        empty_flagged.is_empty(),
        "empty belt flagged: {empty_flagged:?} of {flagged:?}"
    );

    // One flipped bit in the statistics: the bank is refused with the reason.
    let mut bytes = std::fs::read(&stats).unwrap();
    bytes[4000] ^= 1;
    std::fs::write(&stats, &bytes).unwrap();
    let e = maeday_edge::bank::store::StoredBank::load(&bank).unwrap_err();
    assert!(format!("{e:#}").contains("corrupt"), "{e:#}");
    std::fs::write(&stats, &bytes[..bytes.len() - 4]).unwrap();
    let e = maeday_edge::bank::store::StoredBank::load(&bank).unwrap_err();
    assert!(format!("{e:#}").contains("holds"), "{e:#}");
}
