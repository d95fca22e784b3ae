//! Evaluation datasets on disk: which images are normal, which anomalous, where masks are.
//!
//! Layouts, detected from the folder:
//! - MVTec AD: `<cat>/test/<defect>/*.png` with `<cat>/ground_truth/<defect>/<stem>_mask.png`,
//!   `good` = normal; the folder may be one category or the root holding several;
//! - magnetic-tile: `MT_<class>/Imgs/*.jpg` with the mask `<stem>.png` beside each image,
//!   `MT_Free` = normal;
//! - image-level: any other folder of images (searched recursively); a file whose name
//!   starts with `normal` or `good`, or that sits in a `normal`/`good` folder, is normal,
//!   every other one anomalous. No masks, so no pixel metrics.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

use crate::model::schedule::seeded_permutation;

const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif", "pgm", "ppm", "pnm",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    MvTec,
    MagneticTile,
    ImageLevel,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::MvTec => "mvtec",
            Layout::MagneticTile => "magnetic-tile",
            Layout::ImageLevel => "image-level",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub image: PathBuf,
    pub anomalous: bool,
    /// Pixel ground truth (>= 128 is defect); `None` for a normal image means all-normal.
    pub mask: Option<PathBuf>,
    /// Defect class / sub-folder, for per-group reports.
    pub group: String,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub samples: Vec<Sample>,
}

impl Dataset {
    pub fn discover(root: &Path) -> Result<Dataset> {
        ensure!(
            root.is_dir(),
            "dataset folder {} does not exist",
            root.display()
        );
        let layout = if root.join("test").is_dir()
            || subdirs(root)?.iter().any(|d| d.join("test").is_dir())
        {
            Layout::MvTec
        } else if subdirs(root)?
            .iter()
            .any(|d| dir_name(d).starts_with("MT_") && d.join("Imgs").is_dir())
        {
            Layout::MagneticTile
        } else {
            Layout::ImageLevel
        };
        let samples = match layout {
            Layout::MvTec => mvtec(root)?,
            Layout::MagneticTile => magnetic_tile(root)?,
            Layout::ImageLevel => image_level(root)?,
        };
        ensure!(!samples.is_empty(), "no images found in {}", root.display());
        Ok(Dataset {
            root: root.to_path_buf(),
            layout,
            samples,
        })
    }

    /// Keep at most `limit` normal and `limit` anomalous images, picked by a seeded
    /// shuffle (then restored to path order).
    pub fn limit(&mut self, limit: usize, seed: u64) {
        let mut kept = Vec::new();
        for anomalous in [false, true] {
            let class: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| s.anomalous == anomalous)
                .collect();
            let perm = seeded_permutation(class.len(), seed);
            kept.extend(perm.into_iter().take(limit).map(|i| class[i].clone()));
        }
        kept.sort_by(|a, b| a.image.cmp(&b.image));
        self.samples = kept;
    }

    pub fn has_masks(&self) -> bool {
        self.layout != Layout::ImageLevel
    }
}

/// Image files under `dir`, recursively, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    ensure!(dir.is_dir(), "folder {} does not exist", dir.display());
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    Ok(out)
}

fn dir_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn mvtec(root: &Path) -> Result<Vec<Sample>> {
    let categories = if root.join("test").is_dir() {
        vec![root.to_path_buf()]
    } else {
        subdirs(root)?
    };
    let mut out = Vec::new();
    for cat in categories.into_iter().filter(|c| c.join("test").is_dir()) {
        for defect_dir in subdirs(&cat.join("test"))? {
            let defect = dir_name(&defect_dir);
            let anomalous = defect != "good";
            for image in list_images(&defect_dir)? {
                let mask = cat
                    .join("ground_truth")
                    .join(&defect)
                    .join(format!("{}_mask.png", stem(&image)));
                out.push(Sample {
                    mask: (anomalous && mask.is_file()).then_some(mask),
                    image,
                    anomalous,
                    group: format!("{}/{defect}", dir_name(&cat)),
                });
            }
        }
    }
    Ok(out)
}

fn magnetic_tile(root: &Path) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for class_dir in subdirs(root)?
        .into_iter()
        .filter(|d| dir_name(d).starts_with("MT_"))
    {
        let class = dir_name(&class_dir);
        let imgs = class_dir.join("Imgs");
        for image in list_images(&imgs)? {
            if image
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"))
            {
                continue; // the masks
            }
            let mask = image.with_extension("png");
            out.push(Sample {
                mask: mask.is_file().then_some(mask),
                image,
                anomalous: class != "MT_Free",
                group: class.clone(),
            });
        }
    }
    Ok(out)
}

fn image_level(root: &Path) -> Result<Vec<Sample>> {
    Ok(list_images(root)?
        .into_iter()
        .map(|image| {
            let name = stem(&image).to_ascii_lowercase();
            let parent = image
                .parent()
                .map(dir_name)
                .unwrap_or_default()
                .to_ascii_lowercase();
            let normal = name.starts_with("normal")
                || name.starts_with("good")
                || parent == "good"
                || parent == "normal";
            let group = image
                .parent()
                .and_then(|p| p.strip_prefix(root).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            Sample {
                image,
                anomalous: !normal,
                mask: None,
                group,
            }
        })
        .collect())
}
