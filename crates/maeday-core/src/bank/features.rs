//! Patch features for the memory bank: the EfficientNet-Lite0 extractor of
//! `models/efficientnet-lite0` (ImageNet weights, exported by `python -m models.workstation
//! export-extractor`) run through tract.
//!
//! One 224 x 224 frame gives a 28 x 28 grid of 152-d features (stride 8 and stride 16
//! stages, 3 x 3 local means): one row per 8 x 8 pixel patch, row-major over the grid.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::bank::memory::Features;

/// `extractor.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractorManifest {
    pub name: String,
    pub weights: String,
    pub graph: String,
    pub graph_sha256: String,
    /// The graph takes RGB in [0, 1], `[1, 3, input_size, input_size]`.
    pub input_size: usize,
    pub feature_dim: usize,
    /// Output `[1, feature_dim, grid, grid]`.
    pub grid: usize,
}

type Plan = Arc<TypedRunnableModel>;

pub struct FeatureExtractor {
    pub manifest: ExtractorManifest,
    pub dir: PathBuf,
    plan: Plan,
}

impl FeatureExtractor {
    /// Reads the manifest, checks the graph's sha256, plans the graph for its input size.
    pub fn open(dir: &Path) -> Result<FeatureExtractor> {
        let path = dir.join("extractor.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: ExtractorManifest =
            toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        let graph = dir.join(&manifest.graph);
        let bytes =
            std::fs::read(&graph).with_context(|| format!("cannot read {}", graph.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        ensure!(
            sha == manifest.graph_sha256,
            "{} has sha256 {sha}, the manifest says {}",
            graph.display(),
            manifest.graph_sha256
        );
        let s = manifest.input_size;
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .with_context(|| format!("cannot parse {}", graph.display()))?
            .with_input_fact(0, f32::fact([1, 3, s, s]).into())?
            .into_optimized()
            .context("optimisation failed")?
            .into_runnable()?;
        let out = plan
            .model()
            .output_fact(0)?
            .shape
            .as_concrete()
            .map(|d| d.to_vec());
        let want = vec![1, manifest.feature_dim, manifest.grid, manifest.grid];
        ensure!(
            out.as_deref() == Some(&want[..]),
            "the extractor outputs {out:?}, its manifest says {want:?}"
        );
        Ok(FeatureExtractor {
            manifest,
            dir: dir.to_path_buf(),
            plan,
        })
    }

    /// Features of one `[3, S, S]` RGB tensor in [0, 1]: `grid * grid` rows.
    pub fn features(&self, image: &[f32]) -> Result<Features> {
        let s = self.manifest.input_size;
        ensure!(
            image.len() == 3 * s * s,
            "image tensor has {} values, expected {}",
            image.len(),
            3 * s * s
        );
        let input = Tensor::from_shape(&[1, 3, s, s], image)?;
        let out = self.plan.run(tvec!(input.into()))?;
        let tensor = out[0].clone().into_tensor();
        let view = tensor.to_plain_array_view::<f32>()?;
        let maps = view
            .as_slice()
            .ok_or_else(|| anyhow::anyhow!("extractor output is not contiguous"))?;
        // [D, G*G] (channels first) -> rows of D per grid cell.
        let (d, cells) = (self.manifest.feature_dim, self.manifest.grid.pow(2));
        let mut rows = vec![0f32; cells * d];
        for c in 0..d {
            for (p, v) in maps[c * cells..(c + 1) * cells].iter().enumerate() {
                rows[p * d + c] = *v;
            }
        }
        Features::new(d, rows)
    }

    /// Features of a frame squashed to the input size.
    pub fn features_of(&self, frame: &image::DynamicImage) -> Result<Features> {
        let s = self.manifest.input_size as u32;
        let rgb = image::imageops::resize(
            &frame.to_rgb8(),
            s,
            s,
            image::imageops::FilterType::CatmullRom,
        );
        let n = (s * s) as usize;
        let mut t = vec![0f32; 3 * n];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                t[c * n + i] = px[c] as f32 / 255.0;
            }
        }
        self.features(&t)
    }
}

/// The feature extractor at `dir`, or the shipped one.
pub fn open_extractor(dir: Option<&PathBuf>) -> Result<FeatureExtractor> {
    let dir = dir
        .cloned()
        .unwrap_or_else(crate::model::bundled::default_extractor_dir);
    FeatureExtractor::open(&dir)
        .with_context(|| format!("cannot open the feature extractor {}", dir.display()))
}
