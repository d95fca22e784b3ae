//! `--engine tract-cuda` where no GPU can be used (this machine: no NVIDIA driver): a clear
//! refusal that says why and how to fall back; with fallback allowed, the CPU serves the same
//! scores. Without the `tract-cuda` feature the refusal says how to build it.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn score(extra: &[&str]) -> Output {
    let image = repo().join("models/samples/coffee-224.png");
    Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args(["score", "--masks", "4", "--threads", "1"])
        .args(extra)
        .arg(&image)
        .env("RUST_LOG", "warn")
        .env_remove("MAEDAY_MODEL")
        .output()
        .unwrap()
}

fn a_gpu_is_here() -> bool {
    std::path::Path::new("/dev/nvidia0").exists()
}

#[test]
fn tract_cuda_without_a_gpu_is_refused_clearly_and_falls_back_only_when_allowed() {
    if a_gpu_is_here() {
        eprintln!("skipped: this machine has an NVIDIA GPU (benches/gpu-check.sh measures it)");
        return;
    }
    let refused = score(&["--engine", "tract-cuda"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "served without a GPU: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("tract-cuda") && err.contains("allow"), "{err}");
    if cfg!(any(feature = "tract-cuda", feature = "tract-cuda-12")) {
        assert!(
            err.contains("driver") || err.contains("libcuda") || err.contains("CUDA"),
            "the refusal does not say what is missing: {err}"
        );
    } else {
        assert!(err.contains("--features tract-cuda"), "{err}");
    }

    let fallback = score(&["--engine", "tract-cuda", "--gpu-allow-fallback"]);
    let err = String::from_utf8_lossy(&fallback.stderr);
    assert!(fallback.status.success(), "{err}");
    assert!(err.contains("serving on the CPU"), "no warning: {err}");
    let cpu = score(&["--engine", "tract"]);
    assert!(cpu.status.success());
    let line = |o: &Output| -> serde_json::Value {
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap()
    };
    assert_eq!(line(&fallback)["score"], line(&cpu)["score"]);
}
