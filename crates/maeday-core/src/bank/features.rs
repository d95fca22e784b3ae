//! Patch features for the memory bank, run through tract: the EfficientNet-Lite0 extractor
//! of `models/efficientnet-lite0` (ImageNet weights, `python -m models.workstation
//! export-extractor`) or the DINOv2 ViT-S/14 one of `models/dinov2-vits14` (`export-dinov2`).
//!
//! A window gives a `grid x grid` grid of features, one row per patch, row-major: Lite0 a
//! 28 x 28 grid of 152-d features from a 224 window (stride 8 and 16 stages, 3 x 3 means);
//! DINOv2 a 32 x 32 grid of 384-d patch tokens from the window's region sampled at 448 px
//! (AnomalyDINO's resolution; [`crate::bank::view`]) and run as 2 x 2 tiles of 224 whose
//! 16 x 16 grids are stitched (a whole 448 view scored worse), rows scaled to unit length so the
//! bank's distance is the cosine distance (set by `extractor.toml`, as is the image score:
//! the map's maximum, or the mean of its top fraction; banks record which).

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use crate::bank::memory::Features;
use crate::detect::engine::use_cnn_ops;

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
    /// How patches are compared: `euclidean` (PatchCore) or `cosine` (AnomalyDINO).
    #[serde(default)]
    pub distance: Distance,
    /// The bank scorer's image score: the mean of this top fraction of the map's pixels
    /// (AnomalyDINO: 0.01); absent: the map's maximum.
    #[serde(default)]
    pub image_score_top: Option<f64>,
    /// Each window is sampled at this size and the graph runs on its `(view / input)^2`
    /// tiles, whose grids are stitched (AnomalyDINO's 448 px as 2 x 2 windows of 224);
    /// absent: the input size.
    #[serde(default)]
    pub view_size: Option<usize>,
}

impl ExtractorManifest {
    /// The bank scorer's image score rule as `bank.toml` records it: `max` or `top F`.
    pub fn image_score_rule(&self) -> String {
        match self.image_score_top {
            Some(top) => format!("top {top}"),
            None => "max".into(),
        }
    }

    /// The side of a window's view, in pixels.
    pub fn view_size(&self) -> usize {
        self.view_size.unwrap_or(self.input_size)
    }

    /// The side of a view's stitched patch grid.
    pub fn view_grid(&self) -> usize {
        self.grid * (self.view_size() / self.input_size.max(1))
    }
}

/// How a query patch is compared with the bank's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Euclidean distance between the raw features.
    #[default]
    Euclidean,
    /// `1 - cos`: rows are scaled to unit length, and `|a - b|^2 / 2` is the cosine distance.
    Cosine,
}

type Plan = Arc<TypedRunnableModel>;

/// `dir/extractor.toml`, parsed.
pub fn read_manifest(dir: &Path) -> Result<ExtractorManifest> {
    let path = dir.join("extractor.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

pub struct FeatureExtractor {
    pub manifest: ExtractorManifest,
    pub dir: PathBuf,
    plan: Plan,
}

impl FeatureExtractor {
    /// Reads the manifest, checks the graph's sha256, plans the graph for its input size.
    pub fn open(dir: &Path) -> Result<FeatureExtractor> {
        let path = dir.join("extractor.toml");
        let manifest = read_manifest(dir)?;
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
        if let Some(top) = manifest.image_score_top {
            ensure!(
                top > 0.0 && top <= 1.0,
                "{}: image_score_top must be in (0, 1], got {top}",
                path.display()
            );
        }
        let (s, v) = (manifest.input_size, manifest.view_size());
        ensure!(
            s > 0 && v % s == 0 && v / s <= 4,
            "{}: view_size {v} must be 1 to 4 times input_size {s}",
            path.display()
        );
        let mut typed = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .with_context(|| format!("cannot parse {}", graph.display()))?
            .with_input_fact(0, f32::fact([1, 3, s, s]).into())?
            .into_typed()?
            .into_decluttered()?;
        // Our ops for what tract runs slowly here (see `detect::engine::direct_conv`).
        // `MAEDAY_TRACT_CNN_OPS=tract` keeps tract's own: a switch for side-by-side
        // benchmarks (`benches/bank.rs`), not a setting.
        if std::env::var_os("MAEDAY_TRACT_CNN_OPS").is_none_or(|v| v != "tract") {
            let n = use_cnn_ops(&mut typed)?;
            log::debug!("the extractor's convolutions, box sums, resizes run as ours: {n:?}");
        }
        let plan = typed
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

    /// Features of one square `[3, W, W]` RGB tensor in [0, 1] (a window): `grid * grid`
    /// rows, scaled to unit length for the cosine [`Distance`].
    pub fn features(&self, image: &[f32]) -> Result<Features> {
        let mut f = self.view_features(image)?;
        if self.manifest.distance == Distance::Cosine {
            for row in f.data.chunks_mut(f.dim) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(f)
    }

    /// The graph's features of a window's view: a view of `view_size` is cut into
    /// `k x k` tiles of the input size, each run, their grids stitched into one
    /// `view_grid`-square grid; any other size is resized to the input.
    pub fn view_features(&self, image: &[f32]) -> Result<Features> {
        let (s, v, g, d) = (
            self.manifest.input_size,
            self.manifest.view_size(),
            self.manifest.grid,
            self.manifest.feature_dim,
        );
        if v == s || image.len() != 3 * v * v {
            return self.raw_features(image);
        }
        let k = v / s;
        let mut rows = vec![0f32; (k * g).pow(2) * d];
        let mut tile = vec![0f32; 3 * s * s];
        for (ty, tx) in (0..k).flat_map(|y| (0..k).map(move |x| (y, x))) {
            for c in 0..3 {
                for r in 0..s {
                    let src = c * v * v + (ty * s + r) * v + tx * s;
                    tile[(c * s + r) * s..][..s].copy_from_slice(&image[src..src + s]);
                }
            }
            let f = self.raw_features(&tile)?;
            for (gy, gx) in (0..g).flat_map(|y| (0..g).map(move |x| (y, x))) {
                let dst = ((ty * g + gy) * k * g + tx * g + gx) * d;
                rows[dst..dst + d].copy_from_slice(f.row(gy * g + gx));
            }
        }
        Features::new(d, rows)
    }

    /// The graph's output for one square `[3, W, W]` RGB window in [0, 1], as rows. A window
    /// of another size than the graph's input is resized to it (bilinear, half-pixel).
    pub fn raw_features(&self, image: &[f32]) -> Result<Features> {
        let s = self.manifest.input_size;
        let w = ((image.len() / 3) as f64).sqrt().round() as usize;
        ensure!(
            w > 0 && image.len() == 3 * w * w,
            "image tensor has {} values, not a square RGB window",
            image.len()
        );
        let resized;
        let image = if w == s {
            image
        } else {
            resized = image
                .chunks(w * w)
                .flat_map(|c| crate::bank::scoring::upsample_bilinear(c, w, w, s, s))
                .collect::<Vec<f32>>();
            &resized[..]
        };
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

    /// The patch distances of `dist` (Euclidean, from [`crate::bank::memory::MemoryBank`])
    /// in this extractor's [`Distance`].
    pub fn to_distance(&self, dist: &mut [f32]) {
        if self.manifest.distance == Distance::Cosine {
            dist.iter_mut().for_each(|d| *d = *d * *d / 2.0);
        }
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

/// The extractor to serve a bank with: `dir` when one is configured, else the shipped
/// extractor whose manifest name the bank records (`bank.toml`'s `extractor`), else the
/// shipped default. A bank made by an extractor that is not shipped needs `dir`.
pub fn open_extractor_for(dir: Option<&PathBuf>, bank: Option<&str>) -> Result<FeatureExtractor> {
    if dir.is_none() {
        for (short, _) in crate::model::bundled::EXTRACTORS {
            let d = crate::model::bundled::extractor_dir(Path::new(short));
            if read_manifest(&d).is_ok_and(|m| Some(m.name.as_str()) == bank) {
                return FeatureExtractor::open(&d)
                    .with_context(|| format!("cannot open the feature extractor {}", d.display()));
            }
        }
    }
    open_extractor(dir)
}

/// The feature extractor at `dir` (a folder, or a shipped extractor's short name: `lite0`,
/// `dinov2`), or the shipped default.
pub fn open_extractor(dir: Option<&PathBuf>) -> Result<FeatureExtractor> {
    let dir = match dir {
        Some(d) => crate::model::bundled::extractor_dir(d),
        None => crate::model::bundled::default_extractor_dir(),
    };
    FeatureExtractor::open(&dir)
        .with_context(|| format!("cannot open the feature extractor {}", dir.display()))
}
