//! What the operator set, shared by the capture threads (a paused replay waits), the
//! inference thread (skips a paused camera's frames, applies the thresholds, hands out
//! frame requests) and the sink thread (runs the requests).
//!
//! Pause and thresholds persist across restarts in one JSON file in the state folder
//! (`bundles.state_dir`, else the spool folder), replaced atomically (fsynced) before a
//! change takes effect: a paused camera stays paused after a reboot, because whoever
//! paused it (a camera being serviced) has not said otherwise. Thresholds are tied to the
//! model they were set for: the score's scale is the model's (and the bank's), so when
//! another model or bank serves (a bundle, a rollback, an enrollment, or a different
//! graph, scorer or bundle version at boot) operator thresholds are dropped, logged, and `status` says so
//! (`thresholds_reset`). A file that cannot be read is logged and ignored: the device
//! serves with the config's and model's thresholds rather than not at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::daemon::operator::reply::{CameraState, CameraStates};
use crate::daemon::operator::request::{RequestId, ThresholdChange};
use crate::daemon::payload::ServingModel;
use crate::daemon::shutdown::{Shutdown, RECHECK};
use crate::model::manifest::Thresholds;

/// The file's name in the state folder.
pub const FILE: &str = "operator.json";

/// A file larger than this is not read (it is never written that large).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A request for a camera's next frame (`trigger`, `snapshot`).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameAsk {
    pub id: RequestId,
    /// Keep the frame's pixels for a snapshot JPEG.
    pub snapshot: bool,
}

/// One camera's operator settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    paused: bool,
    image: Option<f32>,
    pixel: Option<f32>,
    /// Operator thresholds were dropped for a new model (not persisted).
    #[serde(skip)]
    reset: bool,
}

/// The file: the model the thresholds were set for, and each camera's settings.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    model_sha256: String,
    scorer: String,
    bundle_version: Option<u64>,
    cameras: BTreeMap<String, Control>,
}

/// The thresholds a camera has without the operator, and where they come from.
#[derive(Debug, Clone, Copy)]
pub struct Base {
    pub thresholds: Option<Thresholds>,
    pub from: &'static str,
}

impl Base {
    /// The config's thresholds for the camera, else the serving model's.
    pub fn of(config: Option<Thresholds>, serving: &ServingModel) -> Base {
        match config {
            Some(t) => Base {
                thresholds: Some(t),
                from: "config",
            },
            None => Base {
                thresholds: serving.thresholds,
                from: serving.thresholds_from,
            },
        }
    }
}

struct Inner {
    cams: Vec<Control>,
    asks: Vec<Vec<FrameAsk>>,
    /// The serving model: (graph sha256, scorer description, bundle version).
    model: ModelKey,
}

type ModelKey = (String, String, Option<u64>);

fn key_of(s: &ServingModel) -> ModelKey {
    (s.sha256.clone(), s.scorer.clone(), s.bundle_version)
}

/// The operator's settings and the frame requests waiting, for every camera.
pub struct Operator {
    inner: Mutex<Inner>,
    changed: Condvar,
    /// Where the settings persist (none without a state folder: not persisted).
    path: Option<PathBuf>,
    names: Vec<String>,
}

impl Operator {
    /// The settings saved in `path` for these cameras, for the model serving now.
    pub fn open(path: Option<PathBuf>, names: Vec<String>, serving: &ServingModel) -> Operator {
        let model = key_of(serving);
        let mut cams = vec![Control::default(); names.len()];
        if let Some(p) = &path {
            match load(p) {
                Ok(Some(saved)) => {
                    let same_model = (
                        saved.model_sha256.clone(),
                        saved.scorer.clone(),
                        saved.bundle_version,
                    ) == model;
                    for (i, name) in names.iter().enumerate() {
                        if let Some(c) = saved.cameras.get(name) {
                            cams[i] = *c;
                            if !same_model && (c.image.is_some() || c.pixel.is_some()) {
                                log::warn!(
                                    "camera {name:?}: the operator's thresholds were set for \
                                     another model ({} / {}): dropped, the model's apply",
                                    saved.model_sha256.get(..12).unwrap_or(""),
                                    saved.scorer
                                );
                                cams[i] = Control {
                                    paused: c.paused,
                                    reset: true,
                                    ..Control::default()
                                };
                            }
                        }
                    }
                    let paused: Vec<_> =
                        names.iter().zip(&cams).filter(|(_, c)| c.paused).collect();
                    if !paused.is_empty() {
                        log::warn!(
                            "paused by an operator (kept across restarts; `resume` to score): {:?}",
                            paused.iter().map(|(n, _)| n).collect::<Vec<_>>()
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => log::error!(
                    "{e:#}: ignored, no camera is paused and no operator thresholds apply"
                ),
            }
        }
        let n = names.len();
        Operator {
            inner: Mutex::new(Inner {
                cams,
                asks: vec![Vec::new(); n],
                model,
            }),
            changed: Condvar::new(),
            path,
            names,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn paused(&self, camera: usize) -> bool {
        self.lock().cams[camera].paused
    }

    /// Whether the camera's frames are wanted now: not paused, or a frame request waits.
    pub fn wants_frames(&self, camera: usize) -> bool {
        let g = self.lock();
        !g.cams[camera].paused || !g.asks[camera].is_empty()
    }

    /// For a replay that waits for the pipeline: wait while its frames are not wanted.
    /// False when stopped first.
    pub fn wait_wanted(&self, camera: usize, stop: &Shutdown) -> bool {
        let mut g = self.lock();
        while g.cams[camera].paused && g.asks[camera].is_empty() {
            if stop.is_set() {
                return false;
            }
            g = self
                .changed
                .wait_timeout(g, RECHECK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Ask for the camera's next scored frame.
    pub fn ask(&self, camera: usize, ask: FrameAsk) {
        self.lock().asks[camera].push(ask);
        self.changed.notify_all();
    }

    /// Withdraw a request not yet taken (it timed out); false if inference took it.
    pub fn withdraw(&self, camera: usize, id: &RequestId) -> bool {
        let mut g = self.lock();
        let before = g.asks[camera].len();
        g.asks[camera].retain(|a| &a.id != id);
        g.asks[camera].len() < before
    }

    /// The requests this frame of `camera` answers (inference, before scoring it).
    pub fn take_asks(&self, camera: usize) -> Vec<FrameAsk> {
        std::mem::take(&mut self.lock().asks[camera])
    }

    /// The thresholds in force: the operator's over `base` (one set by the operator and
    /// the other from `base`; none set: `base`).
    pub fn thresholds(&self, camera: usize, base: Option<Thresholds>) -> Option<Thresholds> {
        effective(&self.lock().cams[camera], base).0
    }

    /// Pause or resume, persisted first.
    pub fn set_paused(&self, camera: usize, paused: bool) -> Result<()> {
        self.change(|cams| cams[camera].paused = paused)
    }

    /// Change the thresholds of `cameras`, persisted first.
    pub fn set_thresholds(&self, cameras: &[usize], change: ThresholdChange) -> Result<()> {
        self.change(|cams| {
            for &i in cameras {
                let c = &mut cams[i];
                match change {
                    ThresholdChange::Reset => (c.image, c.pixel) = (None, None),
                    ThresholdChange::Set { image, pixel } => {
                        c.image = image.or(c.image);
                        c.pixel = pixel.or(c.pixel);
                    }
                }
                c.reset = false;
            }
        })
    }

    /// Another model serves now (a swap, between two frames): operator thresholds set
    /// for the old one are dropped (its score scale may differ). True when some were.
    pub fn serving(&self, s: &ServingModel) -> bool {
        let model = key_of(s);
        let had = {
            let mut g = self.lock();
            if g.model == model {
                return false;
            }
            g.model = model;
            g.cams
                .iter()
                .any(|c| c.image.is_some() || c.pixel.is_some())
        };
        let result = self.change(|cams| {
            for c in cams.iter_mut() {
                if c.image.is_some() || c.pixel.is_some() {
                    *c = Control {
                        paused: c.paused,
                        reset: true,
                        ..Control::default()
                    };
                }
            }
        });
        if let Err(e) = result {
            log::error!("operator thresholds: {e:#}");
        }
        if had {
            log::warn!(
                "another model serves ({} / {}): the operator's thresholds were set for the old \
                 one and are dropped; the new model's apply",
                s.name,
                s.scorer
            );
        }
        had
    }

    /// Every camera's state, given what each has without the operator.
    pub fn states(&self, bases: &[Base]) -> CameraStates {
        let g = self.lock();
        self.names
            .iter()
            .zip(&g.cams)
            .zip(bases)
            .map(|((name, c), base)| {
                let (t, operator) = effective(c, base.thresholds);
                let from = if operator {
                    Some("operator")
                } else {
                    t.map(|_| base.from)
                };
                let state = CameraState {
                    paused: c.paused,
                    image_threshold: t.map(|t| t.image),
                    pixel_threshold: t.map(|t| t.pixel),
                    thresholds_from: from,
                    thresholds_reset: c.reset.then_some("model changed"),
                };
                (name.clone(), state)
            })
            .collect()
    }

    /// Apply `edit` to a copy, persist it, then make it current.
    fn change(&self, edit: impl FnOnce(&mut Vec<Control>)) -> Result<()> {
        let mut g = self.lock();
        let mut cams = g.cams.clone();
        edit(&mut cams);
        if let Some(path) = &self.path {
            let saved = Saved {
                model_sha256: g.model.0.clone(),
                scorer: g.model.1.clone(),
                bundle_version: g.model.2,
                cameras: self
                    .names
                    .iter()
                    .cloned()
                    .zip(cams.iter().copied())
                    .collect(),
            };
            let bytes = serde_json::to_vec_pretty(&saved)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            crate::durable::write_atomic(path, &bytes)
                .with_context(|| format!("cannot save {}", path.display()))?;
        }
        g.cams = cams;
        drop(g);
        self.changed.notify_all();
        Ok(())
    }
}

/// The thresholds in force and whether the operator set (a part of) them.
fn effective(c: &Control, base: Option<Thresholds>) -> (Option<Thresholds>, bool) {
    if c.image.is_none() && c.pixel.is_none() {
        return (base, false);
    }
    match (
        c.image.or(base.map(|b| b.image)),
        c.pixel.or(base.map(|b| b.pixel)),
    ) {
        (Some(image), Some(pixel)) => (Some(Thresholds { image, pixel }), true),
        _ => (base, false),
    }
}

fn load(path: &std::path::Path) -> Result<Option<Saved>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    anyhow::ensure!(
        meta.len() <= MAX_FILE_BYTES,
        "{} is {} bytes, more than any the daemon writes",
        path.display(),
        meta.len()
    );
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let saved: Saved =
        serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))?;
    for c in saved.cameras.values() {
        for v in [c.image, c.pixel].into_iter().flatten() {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{}: a threshold is not finite and >= 0",
                path.display()
            );
        }
    }
    Ok(Some(saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(sha: &str, thresholds: Option<Thresholds>) -> ServingModel {
        ServingModel {
            name: "m".into(),
            sha256: sha.into(),
            schedule: "s".into(),
            engine: "tract".into(),
            bundle_version: None,
            scorer: "maeday".into(),
            thresholds,
            thresholds_from: "model",
        }
    }

    fn names() -> Vec<String> {
        vec!["a".to_string(), "b".to_string()]
    }

    #[test]
    fn settings_persist_and_thresholds_follow_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let t = Thresholds {
            image: 2.0,
            pixel: 1.0,
        };
        let m1 = model("aa", Some(t));
        let op = Operator::open(Some(path.clone()), names(), &m1);
        let set = ThresholdChange::Set {
            image: Some(5.0),
            pixel: None,
        };
        op.set_thresholds(&[1], set).unwrap();
        op.set_paused(0, true).unwrap();
        assert_eq!(
            op.thresholds(1, Some(t)),
            Some(Thresholds {
                image: 5.0,
                pixel: 1.0
            })
        );
        assert_eq!(op.thresholds(0, Some(t)), Some(t));
        assert!(op.paused(0) && !op.wants_frames(0) && op.wants_frames(1));

        // The same model after a restart: everything is back.
        let again = Operator::open(Some(path.clone()), names(), &m1);
        let bases = [Base::of(None, &m1), Base::of(None, &m1)];
        let s = again.states(&bases);
        assert!(s["a"].paused);
        assert_eq!(s["b"].image_threshold, Some(5.0));
        assert_eq!(s["b"].thresholds_from, Some("operator"));
        assert_eq!(s["a"].thresholds_from, Some("model"));

        // Another model at boot: the pause stays, the thresholds are dropped.
        let m2 = model("bb", Some(t));
        let other = Operator::open(Some(path.clone()), names(), &m2);
        let s = other.states(&bases);
        assert!(s["a"].paused);
        assert_eq!(s["b"].image_threshold, Some(2.0));
        assert_eq!(s["b"].thresholds_reset, Some("model changed"));

        // A swap while running does the same, and saves it.
        assert!(again.serving(&m2));
        assert_eq!(again.thresholds(1, Some(t)), Some(t));
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(saved["model_sha256"], "bb");
        assert_eq!(saved["cameras"]["b"]["image"], serde_json::Value::Null);

        // A frame request wakes a paused camera for one frame.
        again.ask(
            0,
            FrameAsk {
                id: RequestId::parse("x").unwrap(),
                snapshot: false,
            },
        );
        assert!(again.wants_frames(0));
        assert_eq!(again.take_asks(0).len(), 1);
        assert!(!again.wants_frames(0));

        // A corrupt file is ignored, never fatal.
        std::fs::write(&path, b"{not json").unwrap();
        let fresh = Operator::open(Some(path), names(), &m1);
        assert!(!fresh.paused(0));
    }
}
