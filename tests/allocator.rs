//! The allocator setting of `src/main.rs` (`cli::allocator`), checked where it matters: the
//! shipped model's frames stop page-faulting their buffers in again. Its own test binary,
//! so that the first half runs with glibc's defaults.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use maeday_edge::detect::engine::{Engine, EngineOptions, Precision, TractEngine};
use maeday_edge::model::manifest::Model;
use maeday_edge::model::schedule::{MaskSchedule, ScheduleKind};

/// Minor page faults of this process so far.
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // Safety: getrusage fills the struct it is given.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) },
        0
    );
    unsafe { usage.assume_init() }.ru_minflt
}

/// Page faults per frame over `frames` frames, after two warm-up frames.
fn faults_per_frame(engine: &mut TractEngine, image: &[f32], frames: i64) -> i64 {
    let mut out = Vec::new();
    for _ in 0..2 {
        engine.run(image, &mut out).unwrap();
    }
    let before = minor_faults();
    for _ in 0..frames {
        engine.run(image, &mut out).unwrap();
    }
    (minor_faults() - before) / frames
}

#[test]
fn kept_buffers_stop_the_page_faults_of_every_frame() {
    let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")).unwrap();
    let schedule = MaskSchedule::generate(ScheduleKind::Balanced, 8, 49, 196, 0).unwrap();
    let opts = EngineOptions {
        threads: 1,
        precision: Precision::F32,
        ..Default::default()
    };
    let mut engine = TractEngine::new(&model, &schedule, &opts).unwrap();
    let image: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let glibc_default = faults_per_frame(&mut engine, &image, 3);
    assert!(maeday_edge::cli::allocator::keep_freed_buffers());
    let kept = faults_per_frame(&mut engine, &image, 3);
    println!("minor page faults per frame (N = 8): glibc default {glibc_default}, kept {kept}");
    assert!(glibc_default > 1000, "{glibc_default}");
    assert!(kept * 10 < glibc_default, "{kept} vs {glibc_default}");
}
