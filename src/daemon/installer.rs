//! Installing a verified bundle: A/B model slots, a background load, golden frames, an
//! atomic switch, a persisted choice, rollback.
//!
//! On disk, under the state folder:
//! - `slots/a/`, `slots/b/`: complete model folders (`manifest.toml`, graph, `bundle.toml`);
//! - `active.toml`: which slot serves, the previous one (for `rollback`), and the highest
//!   version ever installed (downgrades are refused). Written to a temporary file, synced,
//!   then renamed over the old one: a `kill -9` at any moment leaves either the old or the
//!   new choice, and the chosen slot is always complete (it is synced and renamed into place
//!   before `active.toml` names it).
//!
//! Enrollment installs the same way: the serving model's files plus the new memory bank
//! (`bank/`) go into the inactive slot, which is activated with the serving version
//! (`rollback` returns to the model before the enrollment).
//!
//! The install runs on its own thread while the current model keeps serving; only the final
//! hand-over of the loaded detector reaches the inference thread, which takes it between two
//! frames.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Instant;

use anyhow::{Context, Result};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::durable;
use crate::enroll::request::{EnrollJob, EnrollStatus};
use crate::update::bundle::{reject, Abi, Bundle, Rejection};
use crate::update::transfer::{Assembler, Chunk, Limits, Progress};
use std::sync::Arc;

use crate::bank::features::open_extractor;
use crate::bank::store::{Shot, StoredBank};
use crate::daemon::mqtt::spool::Message;
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::fuse::ScorerKind;
use crate::detect::preprocess::Fit;
use crate::enroll::{check_shots, enroll, EnrollSettings};
use crate::model::manifest::Model;

/// What `active.toml` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotState {
    /// "a" or "b"; none until the first bundle is installed (the factory model serves).
    pub active: Option<String>,
    pub previous: Option<String>,
    pub active_version: u64,
    pub previous_version: u64,
    /// The highest bundle version ever installed: anything at or below it is a downgrade.
    pub highest_version: u64,
    /// sha256 of the signed `bundle.toml` of that version: the same bundle sent again is
    /// not a downgrade (it re-installs what the device already trusted).
    pub highest_sha256: Option<String>,
}

pub struct Slots {
    dir: PathBuf,
    pub state: SlotState,
}

impl Slots {
    pub fn open(state_dir: &Path) -> Result<Slots> {
        fs::create_dir_all(state_dir.join("slots"))
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let path = state_dir.join("active.toml");
        let state = match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("corrupt {} (fix or remove it)", path.display()))?,
            Err(_) => SlotState::default(),
        };
        Ok(Slots {
            dir: state_dir.to_path_buf(),
            state,
        })
    }

    pub fn slot_dir(&self, slot: &str) -> PathBuf {
        self.dir.join("slots").join(slot)
    }

    /// The bundle version installed in `dir`, if it is one of the slots (`None`: the
    /// factory model, or a slot holding the factory model with an enrolled bank, which is
    /// version 0: no bundle has version 0).
    pub fn version_of(&self, dir: &Path) -> Option<u64> {
        let st = &self.state;
        [
            (&st.active, st.active_version),
            (&st.previous, st.previous_version),
        ]
        .into_iter()
        .find_map(|(slot, v)| slot.as_ref().filter(|s| self.slot_dir(s) == dir).map(|_| v))
        .filter(|v| *v > 0)
    }

    /// The model to start on: the active slot, else (when it is unusable) the previous
    /// one, else the factory model. No active slot means the factory model was chosen
    /// (none installed yet, or a rollback to it).
    pub fn startup_model(&self, factory: &Path) -> PathBuf {
        if self.state.active.is_none() {
            return factory.to_path_buf();
        }
        for (what, slot) in [
            ("active", &self.state.active),
            ("previous", &self.state.previous),
        ] {
            if let Some(s) = slot {
                let dir = self.slot_dir(s);
                match Model::open(&dir) {
                    Ok(_) => {
                        log::info!("starting on the {what} slot {s} ({})", dir.display());
                        return dir;
                    }
                    Err(e) => log::error!("{what} slot {s} is not usable: {e:#}"),
                }
            }
        }
        factory.to_path_buf()
    }

    /// The bundle version a slot holds (0: none, or an enrollment on the factory model).
    fn holds(&self, slot: &str) -> u64 {
        let st = &self.state;
        if st.active.as_deref() == Some(slot) {
            st.active_version
        } else if st.previous.as_deref() == Some(slot) {
            st.previous_version
        } else {
            0
        }
    }

    /// Where an enrollment may be staged: a slot that does not serve and does not hold the
    /// newest installed bundle (after a rollback the inactive slot may hold it: enrolling
    /// there would destroy it, and the device would refuse it again as a downgrade).
    pub fn enrollment_slot(&self) -> Result<&'static str> {
        let st = &self.state;
        let newest = st.highest_version;
        ["a", "b"]
            .into_iter()
            .filter(|s| st.active.as_deref() != Some(*s))
            .find(|s| newest == 0 || st.active_version == newest || self.holds(s) != newest)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the inactive slot {} holds bundle v{newest}, the newest installed, and \
                     enrolling would overwrite it: roll back to it (or install a newer \
                     bundle) and enroll on that",
                    self.inactive()
                )
            })
    }

    fn inactive(&self) -> &'static str {
        if self.state.active.as_deref() == Some("a") {
            "b"
        } else {
            "a"
        }
    }

    /// Write the bundle's model into the inactive slot (complete and synced before it is
    /// renamed into place). A settings-only bundle takes the graph of the serving model.
    pub fn stage(
        &mut self,
        bundle: &Bundle,
        serving: &Model,
    ) -> Result<(String, PathBuf), Rejection> {
        let slot = self.inactive().to_string();
        let dir = self.slot_dir(&slot);
        let tmp = self.dir.join("slots").join(format!("{slot}.tmp"));
        let io = |e: anyhow::Error| reject("install-failed", format!("{e:#}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| io(e.into()))?;
        let manifest = bundle
            .files
            .get("model/manifest.toml")
            .ok_or_else(|| reject("invalid-model", "no model/manifest.toml in the bundle"))?;
        let m: crate::model::manifest::Manifest =
            toml::from_str(&String::from_utf8_lossy(manifest))
                .map_err(|e| reject("invalid-model", format!("model/manifest.toml: {e}")))?;
        let graph_path = format!("model/{}", m.graph);
        let graph_in_bundle = bundle.files.contains_key(&graph_path);
        for (path, data) in &bundle.files {
            if let Some(rel) = path.strip_prefix("model/") {
                if rel.contains('/') {
                    return Err(reject(
                        "invalid-model",
                        format!("{path}: nested folders are not allowed"),
                    ));
                }
                durable::write_synced(&tmp.join(rel), data).map_err(|e| io(e.into()))?;
            }
        }
        if !graph_in_bundle {
            // Settings only: same graph as now, or it cannot be installed.
            if !serving
                .manifest
                .graph_sha256
                .eq_ignore_ascii_case(&m.graph_sha256)
            {
                return Err(reject(
                    "invalid-model",
                    "settings-only bundle for a graph this device does not run",
                ));
            }
            fs::copy(serving.graph_path(), tmp.join(&m.graph)).map_err(|e| io(e.into()))?;
            if let Ok(f) = fs::File::open(tmp.join(&m.graph)) {
                let _ = f.sync_all();
            }
        }
        durable::write_synced(
            &tmp.join(crate::update::bundle::MANIFEST),
            &bundle.manifest_bytes,
        )
        .map_err(|e| io(e.into()))?;
        // Banks are enrolled on the device and do not travel in bundles: the serving one
        // carries over (`refresh_bank` enrolls it again if the graph or schedule changed).
        let bank = serving.dir.join("bank");
        if bank.join("bank.toml").is_file() {
            durable::copy_dir_synced(&bank, &tmp.join("bank")).map_err(io)?;
        }
        durable::sync_dir(&tmp);
        crate::faults::crash_point("staged");
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).map_err(|e| io(e.into()))?;
        durable::sync_dir(&self.dir.join("slots"));
        crate::faults::crash_point("renamed");
        Ok((slot, dir))
    }

    /// Write the serving model's files and a new memory bank into the inactive slot
    /// (complete and synced before it is renamed into place).
    pub fn stage_enrollment(
        &mut self,
        serving: &Model,
        bank: &mut StoredBank,
        shots: &[Shot],
    ) -> Result<(String, PathBuf)> {
        let slot = self.enrollment_slot()?.to_string();
        let dir = self.slot_dir(&slot);
        let tmp = self.dir.join("slots").join(format!("{slot}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        for entry in fs::read_dir(&serving.dir)
            .with_context(|| format!("cannot read {}", serving.dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let target = tmp.join(entry.file_name());
                fs::copy(entry.path(), &target)
                    .with_context(|| format!("cannot copy {}", entry.path().display()))?;
                fs::File::open(&target)?.sync_all()?;
            }
        }
        bank.save(&tmp.join("bank"), shots)?;
        durable::sync_dir(&tmp);
        crate::faults::crash_point("enroll-staged");
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).with_context(|| format!("cannot rename into {}", dir.display()))?;
        durable::sync_dir(&self.dir.join("slots"));
        Ok((slot, dir))
    }

    /// Make `slot` the active one (atomically), the old active the previous one. `sha`:
    /// the bundle's signed manifest hash, recorded with a new highest version.
    pub fn activate(&mut self, slot: &str, version: u64, sha: Option<&str>) -> Result<()> {
        let mut next = self.state.clone();
        if next.active.as_deref() != Some(slot) {
            next.previous = next.active.take();
            next.previous_version = next.active_version;
        }
        next.active = Some(slot.to_string());
        next.active_version = version;
        if version > next.highest_version || (version == next.highest_version && sha.is_some()) {
            next.highest_version = version;
            next.highest_sha256 = sha.map(str::to_string);
        }
        self.persist(next)
    }

    /// Back to the factory model: the active slot becomes the previous one.
    pub fn to_factory(&mut self) -> Result<()> {
        let mut next = self.state.clone();
        next.previous = next.active.take();
        next.previous_version = next.active_version;
        next.active_version = 0;
        self.persist(next)
    }

    /// Swap active and previous (rollback), keeping the highest version.
    pub fn swap(&mut self) -> Result<()> {
        let mut next = self.state.clone();
        std::mem::swap(&mut next.active, &mut next.previous);
        std::mem::swap(&mut next.active_version, &mut next.previous_version);
        self.persist(next)
    }

    fn persist(&mut self, next: SlotState) -> Result<()> {
        let path = self.dir.join("active.toml");
        let tmp = self.dir.join("active.toml.tmp");
        durable::write_synced(&tmp, toml::to_string(&next)?.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        crate::faults::crash_point("before-activate");
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        durable::sync_dir(&self.dir);
        self.state = next;
        Ok(())
    }
}

/// What the installer thread is asked to do.
pub enum InstallerInput {
    /// A message on a bundle chunk topic.
    Chunk(Vec<u8>),
    Rollback,
    /// Build a memory bank from captured good frames and install it.
    Enroll(EnrollJob),
}

/// Where enrollment progress, verdicts and refusals are published.
pub fn enroll_status_topic(device_id: &str) -> String {
    format!("maeday/{device_id}/enroll/status")
}

/// A loaded detector for the inference thread to switch to between two frames.
pub struct Swap {
    pub detector: Detector,
    /// The bundle version now serving (`None`: the factory model).
    pub version: Option<u64>,
}

/// The `bundle/status` payload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BundleStatus {
    /// `receiving`, `chunk-rejected` (one chunk refused; the transfer goes on), `installed`,
    /// `rejected` (the bundle; with `reason`), `rolled-back`.
    pub state: &'static str,
    pub bundle_sha256: String,
    pub version: Option<u64>,
    pub received: Option<u32>,
    pub count: Option<u32>,
    /// Up to 64 chunk indexes still missing (a sender re-sends them).
    pub missing: Vec<u32>,
    pub reason: Option<&'static str>,
    pub detail: Option<String>,
    /// Milliseconds from the complete bundle to the switch.
    pub install_ms: Option<f64>,
}

pub struct InstallerSettings {
    pub device_id: String,
    pub groups: Vec<String>,
    pub trusted: Vec<VerifyingKey>,
    pub max_bundle_bytes: u64,
    /// Bounds on partial transfers.
    pub limits: Limits,
    pub state_dir: PathBuf,
    /// How serving detectors are built (device overrides such as the mask count).
    pub serving: DetectorOptions,
    pub format: crate::config::PayloadFormat,
    pub enroll: EnrollSettings,
    /// The model shipped with the device (what a rollback past every slot returns to).
    pub factory: PathBuf,
}

pub struct Installer {
    s: InstallerSettings,
    slots: Slots,
    assembler: Assembler,
    /// The model serving now (what a settings-only bundle builds on; its ABI is the device's).
    serving: Model,
    status_topic: String,
    enroll_topic: String,
    outbox: Sender<Message>,
    swaps: Sender<Swap>,
}

impl Installer {
    pub fn new(
        s: InstallerSettings,
        slots: Slots,
        serving: Model,
        outbox: Sender<Message>,
        swaps: Sender<Swap>,
    ) -> Result<Installer> {
        let assembler = Assembler::new(&s.state_dir.join("incoming"), s.limits.clone())?;
        Ok(Installer {
            status_topic: format!("maeday/{}/bundle/status", s.device_id),
            enroll_topic: enroll_status_topic(&s.device_id),
            s,
            slots,
            assembler,
            serving,
            outbox,
            swaps,
        })
    }

    fn status(&self, st: &BundleStatus) {
        match crate::daemon::payload::encode(st, self.s.format) {
            Ok(payload) => {
                let _ = self.outbox.send(Message {
                    topic: self.status_topic.clone(),
                    payload,
                });
            }
            Err(e) => log::error!("cannot encode the bundle status: {e:#}"),
        }
    }

    /// Serve requests until the sender side closes.
    pub fn run(mut self, inputs: Receiver<InstallerInput>) {
        // Loading and testing a model must not slow the model serving frames: run this
        // thread (and the scoring threads it spawns, which inherit it) at nice 10. On Linux
        // the nice value is per thread.
        #[cfg(target_os = "linux")]
        // SAFETY: setpriority only reads its integer arguments; who = 0 is this thread.
        unsafe {
            if libc::setpriority(libc::PRIO_PROCESS, 0, 10) != 0 {
                log::debug!("cannot lower the installer's priority");
            }
        }
        for input in inputs {
            match input {
                InstallerInput::Chunk(bytes) => self.on_chunk(&bytes),
                InstallerInput::Rollback => self.rollback(),
                InstallerInput::Enroll(job) => self.enroll(job),
            }
        }
    }

    fn on_chunk(&mut self, bytes: &[u8]) {
        let chunk = match Chunk::decode(bytes) {
            Ok(c) => c,
            Err(r) => return self.rejected("", None, &r),
        };
        let sha = chunk.bundle_sha256.clone();
        match self.assembler.add(&chunk) {
            Ok(Progress::Finished) => {
                log::debug!(
                    "bundle {sha}: late chunk {} dropped (already done)",
                    chunk.index
                );
            }
            Ok(Progress::Receiving {
                received,
                count,
                missing,
            }) => {
                // Report every chunk for small transfers, every 5% for large ones.
                let step = (count / 20).max(1);
                if received % step == 0 || received + 1 == count {
                    self.status(&BundleStatus {
                        state: "receiving",
                        bundle_sha256: sha.clone(),
                        received: Some(received),
                        count: Some(count),
                        missing,
                        ..Default::default()
                    });
                }
            }
            Ok(Progress::Complete(bytes)) => {
                let started = Instant::now();
                // Parsed once; the version (if it parses) goes into a refusal too.
                let parsed = Bundle::parse(&bytes, self.s.max_bundle_bytes);
                let version = parsed.as_ref().ok().map(|b| b.manifest.version);
                let result = parsed.and_then(|b| self.install(&b));
                // Late chunks of a decided bundle are dropped; one that failed for a local
                // reason (disk, thread) may be sent again.
                let retry = matches!(&result, Err(r) if r.reason == "install-failed");
                self.assembler.discard(&sha, !retry);
                match result {
                    Ok(version) => {
                        let ms = started.elapsed().as_secs_f64() * 1e3;
                        log::info!("bundle v{version} installed in {ms:.0} ms");
                        self.status(&BundleStatus {
                            state: "installed",
                            bundle_sha256: sha,
                            version: Some(version),
                            install_ms: Some(ms),
                            ..Default::default()
                        });
                    }
                    Err(r) => self.rejected(&sha, version, &r),
                }
            }
            Err(r) => {
                // One bad chunk does not end the transfer: a good copy may still come.
                log::warn!("bundle {sha}: chunk {} refused: {r}", chunk.index);
                self.status(&BundleStatus {
                    state: "chunk-rejected",
                    bundle_sha256: sha,
                    reason: Some(r.reason),
                    detail: Some(r.detail),
                    ..Default::default()
                });
            }
        }
    }

    fn rejected(&self, sha: &str, version: Option<u64>, r: &Rejection) {
        log::warn!("bundle {sha} rejected: {r}; the current model keeps serving");
        self.status(&BundleStatus {
            state: "rejected",
            bundle_sha256: sha.to_string(),
            version,
            reason: Some(r.reason),
            detail: Some(r.detail.clone()),
            ..Default::default()
        });
    }

    /// Verify, stage, load, check golden frames, hand over, persist. Any failure leaves
    /// the serving model and the persisted choice untouched.
    pub fn install(&mut self, bundle: &Bundle) -> Result<u64, Rejection> {
        bundle.verify(&self.s.trusted)?;
        let m = &bundle.manifest;
        if !bundle.targets(&self.s.device_id, &self.s.groups) {
            return Err(reject(
                "not-for-this-device",
                format!(
                    "targets {:?}, this is {} in {:?}",
                    m.target, self.s.device_id, self.s.groups
                ),
            ));
        }
        let sha = durable::sha256_hex(&bundle.manifest_bytes);
        let st = &self.slots.state;
        // The newest installed bundle itself, sent again (its slot was lost or rolled back
        // from): not a downgrade.
        let again = m.version == st.highest_version
            && st.active_version != m.version
            && st.highest_sha256.as_deref() == Some(sha.as_str());
        if m.version <= st.highest_version && !again {
            return Err(reject(
                "downgrade",
                format!(
                    "version {} is not above the installed {}",
                    m.version, self.slots.state.highest_version
                ),
            ));
        }
        let device_abi = Abi::of(&self.serving.manifest);
        if m.abi != device_abi {
            return Err(reject(
                "wrong-abi",
                format!("bundle {:?}, device {:?}", m.abi, device_abi),
            ));
        }
        crate::faults::crash_point("verified");
        let (slot, dir) = self.slots.stage(bundle, &self.serving)?;
        let model = Model::open(&dir).map_err(|e| reject("invalid-model", format!("{e:#}")))?;
        if Abi::of(&model.manifest) != m.abi {
            return Err(reject(
                "wrong-abi",
                "the model manifest disagrees with the bundle's ABI",
            ));
        }
        match self.refresh_bank(&model) {
            Ok(true) => {
                log::info!("the carried-over memory bank was enrolled again for this model")
            }
            Ok(false) => {}
            Err(e) => log::warn!(
                "cannot enroll the carried-over memory bank again: {e:#}; the ensemble keeps \
                 its old statistics"
            ),
        }
        let detector = self.golden_check(bundle, model.clone())?;
        crate::faults::crash_point("golden-checked");
        self.swaps
            .send(Swap {
                detector,
                version: Some(m.version),
            })
            .map_err(|_| reject("install-failed", "the inference thread has stopped"))?;
        crate::faults::crash_point("switched");
        self.slots
            .activate(&slot, m.version, Some(&sha))
            .map_err(|e| reject("install-failed", format!("{e:#}")))?;
        self.serving = model;
        Ok(m.version)
    }

    /// A carried-over bank's MAEDAY statistics (and so the ensemble's thresholds) belong to
    /// the graph, schedule and input standardisation it was enrolled with. With a new one,
    /// enroll it again from its stored good frames, same seed and settings. Returns
    /// whether it did.
    fn refresh_bank(&self, model: &Model) -> Result<bool> {
        let dir = model.dir.join("bank");
        if !dir.join("bank.toml").is_file() {
            return Ok(false);
        }
        let stored = StoredBank::load(&dir)?;
        let m = &stored.meta;
        let opts = DetectorOptions {
            fit: m.fit.parse()?,
            scorer: Some(ScorerKind::Maeday),
            banks: Vec::new(),
            ..self.s.serving.clone()
        };
        // Decided from the manifest alone: the engine is loaded only to enroll.
        if m.maeday.model_sha256 == model.manifest.graph_sha256
            && m.maeday.schedule == opts.schedule_for(&model.manifest)?.id()
            && m.maeday.standardise == model.manifest.input.standardise
        {
            return Ok(false);
        }
        let mut detector = Detector::new(model.clone(), &opts)?;
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
                    image: crate::detect::preprocess::load_image(&dir.join(file))?,
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
        let extractor = Arc::new(open_extractor(self.s.serving.extractor.as_ref())?);
        let mut fresh = enroll(&mut detector, extractor, &shots, &settings)?;
        fresh.save(&dir, &shots)?;
        Ok(true)
    }

    /// Load the staged model (in the background: the serving one keeps running), score the
    /// golden frames exactly as the workstation did (squash, the manifest's schedule), and
    /// return the detector to serve with.
    fn golden_check(&self, bundle: &Bundle, model: Model) -> Result<Detector, Rejection> {
        let m = &bundle.manifest;
        let load =
            |e: anyhow::Error| reject("invalid-model", format!("cannot load the graph: {e:#}"));
        let golden_opts = DetectorOptions {
            fit: Fit::Squash,
            engine: self.s.serving.engine.clone(),
            scorer: Some(crate::detect::fuse::ScorerKind::Maeday),
            ..Default::default()
        };
        let mut golden = Detector::new(model.clone(), &golden_opts).map_err(load)?;
        for g in &m.golden {
            let data = &bundle.files[&g.file];
            let frame = image::load_from_memory(data)
                .map_err(|e| reject("corrupt", format!("golden frame {}: {e}", g.file)))?;
            let got = golden
                .detect(&frame)
                .map_err(|e| reject("invalid-model", format!("golden frame {}: {e:#}", g.file)))?
                .score;
            let tol = m.golden_tolerance.abs() * g.score.abs() + 1e-6;
            if !got.is_finite() || (got - g.score).abs() > tol {
                return Err(reject(
                    "golden-mismatch",
                    format!("{}: score {got}, expected {} ± {tol}", g.file, g.score),
                ));
            }
        }
        // The golden detector scores with MAEDAY alone; a slot with a memory bank serves
        // with the configured scorer, which a fresh detector picks up.
        let bank = model.dir.join("bank").join("bank.toml").is_file();
        let same = self.s.serving.masks.is_none()
            && self.s.serving.schedule.is_none()
            && self.s.serving.seed.is_none()
            && (self.s.serving.scorer == Some(crate::detect::fuse::ScorerKind::Maeday) || !bank);
        if same {
            Ok(golden)
        } else {
            drop(golden);
            Detector::new(model, &self.s.serving).map_err(load)
        }
    }

    fn enroll_status(&self, st: &EnrollStatus) {
        match crate::daemon::payload::encode(st, self.s.format) {
            Ok(payload) => {
                let _ = self.outbox.send(Message {
                    topic: self.enroll_topic.clone(),
                    payload,
                });
            }
            Err(e) => log::error!("cannot encode the enroll status: {e:#}"),
        }
    }

    /// Build a bank from the captured frames (at low priority, the serving detector keeps
    /// scoring), stage the serving model with it, hand the new detector over, persist.
    fn enroll(&mut self, job: EnrollJob) {
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
        let result = (|| -> Result<StoredBank> {
            // Refused before the bank is built if it could only go where the newest bundle is.
            self.slots.enrollment_slot()?;
            let size = job
                .shots
                .first()
                .map(|s| (s.image.width(), s.image.height()));
            check_shots(&job.shots, size)?;
            let extractor = Arc::new(open_extractor(self.s.serving.extractor.as_ref())?);
            let opts = DetectorOptions {
                fit: job.fit,
                scorer: Some(ScorerKind::Maeday),
                banks: Vec::new(),
                ..self.s.serving.clone()
            };
            let mut scratch = Detector::new(self.serving.clone(), &opts)?;
            let mut bank = enroll(&mut scratch, extractor, &job.shots, &self.s.enroll)?;
            drop(scratch);
            let (slot, dir) = self
                .slots
                .stage_enrollment(&self.serving, &mut bank, &job.shots)?;
            let model = Model::open(&dir)?;
            let detector = Detector::new(model.clone(), &self.s.serving)?;
            let version = self.slots.version_of(&self.serving.dir);
            self.swaps
                .send(Swap { detector, version })
                .map_err(|_| anyhow::anyhow!("the inference thread has stopped"))?;
            self.slots.activate(&slot, version.unwrap_or(0), None)?;
            self.serving = model;
            Ok(bank)
        })();
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

    fn rollback(&mut self) {
        let Some(prev) = self.slots.state.previous.clone() else {
            if self.slots.state.active.is_some() {
                return self.rollback_to_factory();
            }
            return self.rejected(
                "",
                None,
                &reject("install-failed", "no previous slot to roll back to"),
            );
        };
        let result = (|| -> Result<u64, Rejection> {
            let model = Model::open(self.slots.slot_dir(&prev))
                .map_err(|e| reject("invalid-model", format!("previous slot: {e:#}")))?;
            let detector = Detector::new(model.clone(), &self.s.serving)
                .map_err(|e| reject("invalid-model", format!("{e:#}")))?;
            let version = self.slots.state.previous_version;
            self.swaps
                .send(Swap {
                    detector,
                    version: (version > 0).then_some(version),
                })
                .map_err(|_| reject("install-failed", "the inference thread has stopped"))?;
            self.slots
                .swap()
                .map_err(|e| reject("install-failed", format!("{e:#}")))?;
            self.serving = model;
            Ok(version)
        })();
        match result {
            Ok(version) => self.status(&BundleStatus {
                state: "rolled-back",
                version: (version > 0).then_some(version),
                ..Default::default()
            }),
            Err(r) => self.rejected("", None, &r),
        }
    }

    /// The only slot came from the factory model (an enrollment before any bundle): roll
    /// back to the factory model itself.
    fn rollback_to_factory(&mut self) {
        let result = (|| -> Result<(), Rejection> {
            let model = Model::open(&self.s.factory)
                .map_err(|e| reject("invalid-model", format!("factory model: {e:#}")))?;
            let detector = Detector::new(model.clone(), &self.s.serving)
                .map_err(|e| reject("invalid-model", format!("{e:#}")))?;
            self.swaps
                .send(Swap {
                    detector,
                    version: None,
                })
                .map_err(|_| reject("install-failed", "the inference thread has stopped"))?;
            self.slots
                .to_factory()
                .map_err(|e| reject("install-failed", format!("{e:#}")))?;
            self.serving = model;
            Ok(())
        })();
        match result {
            Ok(()) => self.status(&BundleStatus {
                state: "rolled-back",
                ..Default::default()
            }),
            Err(r) => self.rejected("", None, &r),
        }
    }
}
