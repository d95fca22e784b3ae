//! tract's matmul kernel family (`model.cpu_kernels`, `--cpu-kernels`): the real binary
//! scores the same real photo with each family this CPU has, with the same scores (to 1e-6);
//! `auto` measures and names what it picked; a family the CPU lacks is refused by `--check`
//! naming the key. The family is process-wide in tract, hence one process per family.

use std::path::{Path, PathBuf};
use std::process::Command;

use maeday_edge::detect::engine::{CpuKernels, Family};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `score` one image with the default model at N = 8, one thread: (score, engine).
fn score(kernels: &str, image: &Path) -> (f64, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args([
            "score",
            "--masks",
            "8",
            "--threads",
            "1",
            "--precision",
            "f32",
        ])
        .args(["--cpu-kernels", kernels])
        .arg(image)
        .output()
        .expect("run maeday-edge");
    assert!(
        out.status.success(),
        "score --cpu-kernels {kernels} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON line per image");
    (
        line["score"].as_f64().expect("score"),
        line["engine"].as_str().expect("engine").to_string(),
    )
}

#[test]
fn every_available_family_gives_the_same_scores() {
    let families: Vec<Family> = [Family::Avx512, Family::Avx2, Family::Sve2, Family::Neon]
        .into_iter()
        .filter(|f| f.available())
        .collect();
    if families.len() < 2 {
        eprintln!(
            "skipping: this CPU offers {} kernel family (nothing to compare)",
            families.len()
        );
        return;
    }
    for image in ["coffee.png", "camera.png"] {
        let image = repo().join("models/samples").join(image);
        let runs: Vec<(f64, String)> = families.iter().map(|f| score(f.name(), &image)).collect();
        for (f, (s, engine)) in families.iter().zip(&runs) {
            assert!(
                engine.contains(&format!("{} kernels (config)", f.name())),
                "{engine}"
            );
            let first = runs[0].0;
            assert!(
                (s - first).abs() <= 1e-6 * first.abs().max(1.0),
                "{}: score {s} vs {} with {}",
                f.name(),
                first,
                families[0].name()
            );
        }
    }
}

#[test]
fn auto_measures_and_reports_a_family_this_cpu_has() {
    let image = repo().join("models/samples/coffee.png");
    let (_, engine) = score("auto", &image);
    let available: Vec<Family> = [Family::Avx512, Family::Avx2, Family::Sve2, Family::Neon]
        .into_iter()
        .filter(|f| f.available())
        .collect();
    let picked = available
        .iter()
        .find(|f| engine.contains(&format!("{} kernels (", f.name())));
    assert!(
        picked.is_some() || available.is_empty(),
        "{engine} names none of {available:?}"
    );
    let how = if available.len() >= 2 {
        "(auto)"
    } else {
        "(only one)"
    };
    assert!(engine.contains(how), "{engine}");
}

#[test]
fn check_refuses_a_family_the_cpu_lacks_and_names_the_key() {
    let lacking = [Family::Avx512, Family::Avx2, Family::Sve2, Family::Neon]
        .into_iter()
        .find(|f| !f.available())
        .expect("no CPU has both architectures' families");
    assert!(CpuKernels::Family(lacking).check().is_err());
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("k.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"k\"\n[model]\ncpu_kernels = \"{}\"\n[[camera]]\nname = \"c\"\n\
             source = {{ kind = \"replay\", path = \"{}\" }}\n",
            lacking.name(),
            repo().join("models/samples/coffee-224.png").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args(["run", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--check accepted {}", lacking.name());
    assert!(
        err.contains("model.cpu_kernels") && err.contains("not available"),
        "{err}"
    );
    // And the same config with `auto` passes, printing the choice.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace(lacking.name(), "auto"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_maeday-edge"))
        .args(["run", "--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("matmul kernels: "), "{text}");
}
