//! Enrolling on the device: a memory bank built from captured good frames (at low
//! priority: the serving detector keeps scoring), installed with the serving model into a
//! slot; and a carried-over bank enrolled again when a bundle changes what its statistics
//! belong to.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::bank::features::open_extractor;
use crate::bank::store::{Shot, StoredBank};
use crate::daemon::installer::{Handover, Installer, SlotChange};
use crate::detect::detector::Detector;
use crate::detect::preprocess::{load_image, Fit};
use crate::enroll::request::{EnrollJob, EnrollStatus};
use crate::enroll::{check_shots, enroll, EnrollSettings};
use crate::model::manifest::Model;

impl Installer {
    /// Build a bank from the captured frames, stage the serving model with it, hand the
    /// new detector over, persist; every step reported on `enroll/status`.
    pub(super) fn enroll(&mut self, job: EnrollJob) {
        let started = Instant::now();
        let base = EnrollStatus {
            camera: job.camera.clone(),
            frames: job.shots.len(),
            ..Default::default()
        };
        self.enroll_status(&EnrollStatus {
            state: "building",
            ..base.clone()
        });
        let result = self.enroll_and_serve(&job);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match result {
            Ok(bank) => {
                log::info!(
                    "enrolled {} good frame(s) of {}: bank of {} rows in {ms:.0} ms",
                    job.shots.len(),
                    job.camera,
                    bank.meta.rows
                );
                self.enroll_status(&EnrollStatus {
                    state: "enrolled",
                    rows: Some(bank.meta.rows),
                    rows_before_coreset: Some(bank.meta.rows_before_coreset),
                    image_threshold: Some(bank.meta.thresholds.ensemble.image),
                    enroll_ms: Some(ms),
                    ..base
                });
            }
            Err(e) => {
                log::warn!("enrollment failed: {e:#}; the current model keeps serving");
                self.enroll_status(&EnrollStatus {
                    state: "rejected",
                    detail: Some(format!("{e:#}")),
                    ..base
                });
            }
        }
    }

    fn enroll_and_serve(&mut self, job: &EnrollJob) -> Result<StoredBank> {
        // Refused before the bank is built if it could only go where the newest bundle is.
        self.slots.enrollment_slot()?;
        let size = job
            .shots
            .first()
            .map(|s| (s.image.width(), s.image.height()));
        check_shots(&job.shots, size)?;
        let mut bank = self.build_bank(&self.serving, job.fit, &job.shots, &self.s.enroll)?;
        let (slot, dir) = self
            .slots
            .stage_enrollment(&self.serving, &mut bank, &job.shots)?;
        let model = Model::open(&dir)?;
        // The serving bundle version goes on (0 for the factory model).
        let version = self.slots.version_of(&self.serving.dir);
        self.hand_over(Handover {
            model,
            detector: None,
            version,
            change: SlotChange::Activate { slot, sha: None },
        })
        .map_err(|r| anyhow::anyhow!(r.detail))?;
        Ok(bank)
    }

    /// A carried-over bank's MAEDAY statistics (and so the ensemble's thresholds) belong to
    /// the graph, schedule and input standardisation it was enrolled with. With a new one,
    /// enroll it again from its stored good frames, same seed and settings. Returns
    /// whether it did.
    pub(super) fn refresh_bank(&self, model: &Model) -> Result<bool> {
        let dir = model.dir.join("bank");
        if !dir.join("bank.toml").is_file() {
            return Ok(false);
        }
        let stored = StoredBank::load(&dir)?;
        let m = &stored.meta;
        let fit: Fit = m.fit.parse()?;
        // Decided from the manifest alone: the engine is loaded only to enroll.
        let schedule = self
            .s
            .enrollment_options(fit)
            .schedule_for(&model.manifest)?;
        if m.maeday.model_sha256 == model.manifest.graph_sha256
            && m.maeday.schedule == schedule.id()
            && m.maeday.standardise == model.manifest.input.standardise
        {
            return Ok(false);
        }
        let shots = m
            .shots
            .iter()
            .map(|r| {
                let file = r
                    .file
                    .as_ref()
                    .context("the bank does not hold its good frames")?;
                Ok(Shot {
                    name: r.name.clone(),
                    image: load_image(&dir.join(file))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let settings = EnrollSettings {
            seed: m.seed,
            coreset_fraction: m.coreset_fraction,
            projection_dim: m.projection_dim,
            augment: m.augment.clone(),
            weights: m.weights,
            rule: self.s.enroll.rule,
        };
        let mut fresh = self.build_bank(model, fit, &shots, &settings)?;
        fresh.save(&dir, &shots)?;
        Ok(true)
    }

    /// Enroll `shots` on `model` with a scratch detector (MAEDAY alone, no bank) and the
    /// serving feature extractor.
    fn build_bank(
        &self,
        model: &Model,
        fit: Fit,
        shots: &[Shot],
        settings: &EnrollSettings,
    ) -> Result<StoredBank> {
        let extractor = Arc::new(open_extractor(self.s.serving.extractor.as_ref())?);
        let mut scratch = Detector::new(model.clone(), &self.s.enrollment_options(fit))?;
        enroll(&mut scratch, extractor, shots, settings)
    }
}
