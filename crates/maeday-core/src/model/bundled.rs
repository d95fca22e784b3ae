//! Where the folders shipped in the repository are found at run time (the default model,
//! the feature extractor): an environment variable, the working directory, or the source
//! tree the binary was built from.

use std::path::{Path, PathBuf};

/// The model used when none is given: `$MAEDAY_MODEL`, else `models/default` in the
/// working directory, else the one in the source tree this binary was built from.
pub fn default_model_dir() -> PathBuf {
    bundled_dir("MAEDAY_MODEL", "models/default", "manifest.toml")
}

/// Where the shipped extractor lives (`$MAEDAY_EXTRACTOR`, else `models/efficientnet-lite0`
/// in the working directory or the source tree).
pub fn default_extractor_dir() -> PathBuf {
    bundled_dir(
        "MAEDAY_EXTRACTOR",
        "models/efficientnet-lite0",
        "extractor.toml",
    )
}

/// The shipped extractors by short name (config `model.extractor`, `--extractor`).
pub const EXTRACTORS: [(&str, &str); 2] = [
    ("lite0", "models/efficientnet-lite0"),
    ("dinov2", "models/dinov2-vits14"),
];

/// `dir` itself, or, when it is no extractor folder and its last component is a short
/// name of [`EXTRACTORS`] (`lite0`, `dinov2`; a config resolves it against its folder),
/// that shipped extractor.
pub fn extractor_dir(dir: &Path) -> PathBuf {
    if !dir.join("extractor.toml").is_file() {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((_, rel)) = EXTRACTORS.iter().find(|(n, _)| *n == name) {
            return shipped_dir(rel, "extractor.toml");
        }
    }
    dir.to_path_buf()
}

/// A folder shipped in the repository: `$env` if set, else `rel` in the working directory
/// (when it holds `marker`), else `rel` in the source tree this binary was built from.
pub fn bundled_dir(env: &str, rel: &str, marker: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    shipped_dir(rel, marker)
}

/// `rel` in the working directory (when it holds `marker`), else in the source tree.
pub fn shipped_dir(rel: &str, marker: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.join(marker).is_file() {
        return local;
    }
    source_tree().join(rel)
}

/// The repository this crate was built from (it lives in `crates/maeday-core`): where the
/// shipped model, extractor, samples and test fixtures are.
pub fn source_tree() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir)
        .to_path_buf()
}
