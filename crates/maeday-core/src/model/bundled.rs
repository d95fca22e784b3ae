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

/// A folder shipped in the repository: `$env` if set, else `rel` in the working directory
/// (when it holds `marker`), else `rel` in the source tree this binary was built from.
pub fn bundled_dir(env: &str, rel: &str, marker: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
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
