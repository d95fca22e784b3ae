//! The model folder: `<name>.onnx` + `manifest.toml` (the contract in `models/README.md`).
//!
//! Everything that decides a score is pinned here (normalisation, patch grid, mask
//! schedule, output kind, Gaussian, thresholds), so a device never guesses. A manifest
//! that disagrees with itself or with its graph is rejected before the first frame.

use std::fs;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::schedule::{MaskSchedule, ScheduleKind};

/// The manifest format this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the weights come from (e.g. `random-init`, a training recipe); shown in logs.
    #[serde(default)]
    pub training: String,
    /// File name of the ONNX graph, relative to the model folder.
    pub graph: String,
    pub graph_sha256: String,
    pub input: InputSpec,
    pub masks: MaskSpec,
    pub output: OutputSpec,
    pub scoring: ScoringSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<toml::Table>,
    /// Informational: the network sizes the workstation exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<toml::Table>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Square input side in pixels (224 for the paper).
    pub size: usize,
    pub patch_size: usize,
    pub channels: usize,
    /// Per-channel normalisation: `(pixel / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Optional per-window contrast standardisation, applied before `mean`/`std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardise: Option<Standardise>,
}

/// Per-window contrast standardisation: every window's pixels (in `[0, 1]`) are shifted
/// and scaled, the same for all three channels, so that the window's gray level (the mean
/// of the channels) has this mean and standard deviation.
///
/// Why: the same surface photographed at another exposure or gain changes the size of
/// every reconstruction error, so without it the image score follows the lighting more
/// than the defects (magnetic tiles, captured at several exposures, showed exactly that:
/// `models/README.md#measured-on-real-defects`). The model must be trained on
/// standardised crops; the workstation writes this table when it was.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardise {
    pub mean: f32,
    pub std: f32,
}

/// Added to a window's gray standard deviation so a flat window is not blown up to noise.
pub const STANDARDISE_EPS: f32 = 1e-3;

impl InputSpec {
    pub fn grid(&self) -> usize {
        self.size / self.patch_size
    }
    pub fn patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    pub kind: ScheduleKind,
    /// Masks per frame (N); all go through the graph as one batch.
    pub n: usize,
    /// Visible patches per mask (K).
    pub keep: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// `reconstruction` f32 [N,3,S,S]: scoring runs in Rust.
    Reconstruction,
    /// `anomaly_map` f32 [1,1,S,S]: Eq. 1 is folded into the graph.
    AnomalyMap,
}

impl OutputKind {
    /// The graph output name the contract requires for this kind.
    pub fn tensor_name(self) -> &'static str {
        match self {
            OutputKind::Reconstruction => "reconstruction",
            OutputKind::AnomalyMap => "anomaly_map",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSpec {
    pub gaussian_size: usize,
    pub gaussian_sigma: f32,
}

/// Decision thresholds, written by `calibrate`.
#[derive(Debug, Clone, PartialEq, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// A frame is anomalous when its image score exceeds this.
    pub image: f32,
    /// A pixel belongs to the binary mask when its map value exceeds this.
    pub pixel: f32,
}

impl Manifest {
    /// Check the manifest is self-consistent (no graph needed).
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.format_version == FORMAT_VERSION,
            "manifest format_version {} is not supported (this runtime reads {FORMAT_VERSION})",
            self.format_version
        );
        let i = &self.input;
        ensure!(
            i.channels == 3,
            "input.channels must be 3, not {}",
            i.channels
        );
        ensure!(
            i.patch_size > 0 && i.size > 0 && i.size.is_multiple_of(i.patch_size),
            "input.size {} must be a positive multiple of input.patch_size {}",
            i.size,
            i.patch_size
        );
        ensure!(
            i.std.iter().all(|s| s.is_finite() && *s > 0.0) && i.mean.iter().all(|m| m.is_finite()),
            "input.std must be positive and input.mean finite"
        );
        if let Some(st) = i.standardise {
            ensure!(
                st.mean.is_finite() && st.std.is_finite() && st.std > 0.0,
                "input.standardise needs a finite mean and a positive std, not mean {} std {}",
                st.mean,
                st.std
            );
        }
        ensure!(self.masks.n > 0, "masks.n must be at least 1");
        ensure!(
            self.masks.keep > 0 && self.masks.keep <= i.patches(),
            "masks.keep {} must be within 1..={} (the {}x{} patch grid)",
            self.masks.keep,
            i.patches(),
            i.grid(),
            i.grid()
        );
        let s = &self.scoring;
        ensure!(
            s.gaussian_size % 2 == 1 && s.gaussian_size / 2 < i.size,
            "scoring.gaussian_size must be odd and smaller than the image, not {}",
            s.gaussian_size
        );
        ensure!(
            s.gaussian_sigma > 0.0,
            "scoring.gaussian_sigma must be positive"
        );
        if let Some(t) = self.thresholds {
            ensure!(
                t.image.is_finite() && t.pixel.is_finite(),
                "thresholds must be finite"
            );
        }
        ensure!(
            !self.graph.contains('/') && !self.graph.contains('\\'),
            "graph must be a file name inside the model folder, not {:?}",
            self.graph
        );
        Ok(())
    }

    /// The schedule the manifest pins (kind, N, K, seed) over its patch grid.
    pub fn schedule(&self) -> Result<MaskSchedule> {
        MaskSchedule::generate(
            self.masks.kind,
            self.masks.n,
            self.masks.keep,
            self.input.patches(),
            self.masks.seed,
        )
    }
}

/// A model folder whose manifest was validated and whose graph matches its sha256.
#[derive(Debug, Clone)]
pub struct Model {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Model {
    pub fn open(dir: impl AsRef<Path>) -> Result<Model> {
        let dir = dir.as_ref().to_path_buf();
        ensure!(
            dir.is_dir(),
            "model folder {} does not exist",
            dir.display()
        );
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read the model manifest {}", path.display()))?;
        let manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("invalid manifest {}", path.display()))?;
        manifest
            .validate()
            .with_context(|| format!("invalid manifest {}", path.display()))?;
        let model = Model { dir, manifest };
        let graph = model.graph_path();
        let actual = crate::durable::sha256_file(&graph)
            .with_context(|| format!("cannot read the model graph {}", graph.display()))?;
        if !actual.eq_ignore_ascii_case(&model.manifest.graph_sha256) {
            bail!(
                "graph {} does not match its manifest: sha256 is {actual}, manifest says {}",
                graph.display(),
                model.manifest.graph_sha256
            );
        }
        Ok(model)
    }

    pub fn graph_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.graph)
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// Rewrite `manifest.toml` atomically (temp file + rename), so a crash mid-write never
    /// leaves a device with a half-written manifest.
    pub fn save_manifest(&self) -> Result<()> {
        let path = self.manifest_path();
        let text = toml::to_string_pretty(&self.manifest).context("cannot serialise manifest")?;
        crate::durable::write_atomic(&path, text.as_bytes())
    }
}
