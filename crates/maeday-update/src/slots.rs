//! The A/B model slots on disk, and which one serves.
//!
//! Under the state folder:
//! - `slots/a/`, `slots/b/`: complete model folders (`manifest.toml`, graph, `bundle.toml`,
//!   and `bank/` when a memory bank was enrolled);
//! - `active.toml`: the [`SlotState`]: which slot serves, the previous one (for
//!   `rollback`), and the highest version ever installed (downgrades are refused).
//!
//! A slot is written as `slots/<x>.tmp/`, every file synced, then renamed into place; only
//! then does `active.toml` name it, replaced through a synced temporary file. A `kill -9` at
//! any moment leaves either the old or the new choice, and the chosen slot is complete.
//!
//! No MQTT, no threads: the daemon's installer decides when to stage and activate; the
//! choice itself ([`SlotState`]'s transitions) is pure, so it is unit-tested on its own.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bank::store::{Shot, StoredBank};
use crate::bundle::{reject, Bundle, Rejection, MANIFEST};
use crate::durable;
use crate::model::manifest::{Manifest, Model};

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

impl SlotState {
    /// Whether a bundle of `version`, whose signed manifest hashes to `sha`, may be
    /// installed: above the highest version, or the newest one itself sent again while
    /// another version serves (its slot was lost or rolled back from).
    pub fn admits(&self, version: u64, sha: &str) -> Result<(), Rejection> {
        let again = version == self.highest_version
            && self.active_version != version
            && self.highest_sha256.as_deref() == Some(sha);
        if version <= self.highest_version && !again {
            return Err(reject(
                "downgrade",
                format!(
                    "version {version} is not above the installed {}",
                    self.highest_version
                ),
            ));
        }
        Ok(())
    }

    /// The bundle version a slot holds (0: none, or an enrollment on the factory model).
    pub fn holds(&self, slot: &str) -> u64 {
        if self.active.as_deref() == Some(slot) {
            self.active_version
        } else if self.previous.as_deref() == Some(slot) {
            self.previous_version
        } else {
            0
        }
    }

    /// The slot that does not serve (a bundle is staged there).
    pub fn inactive(&self) -> &'static str {
        if self.active.as_deref() == Some("a") {
            "b"
        } else {
            "a"
        }
    }

    /// Where an enrollment may be staged: a slot that does not serve and does not hold the
    /// newest installed bundle (after a rollback the inactive slot may hold it: enrolling
    /// there would destroy it, and the device would refuse it again as a downgrade).
    pub fn enrollment_slot(&self) -> Result<&'static str> {
        let newest = self.highest_version;
        ["a", "b"]
            .into_iter()
            .filter(|s| self.active.as_deref() != Some(*s))
            .find(|s| newest == 0 || self.active_version == newest || self.holds(s) != newest)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the inactive slot {} holds bundle v{newest}, the newest installed, and \
                     enrolling would overwrite it: roll back to it (or install a newer \
                     bundle) and enroll on that",
                    self.inactive()
                )
            })
    }

    /// `slot` serves `version`, the old active one becomes the previous one. `sha`: the
    /// bundle's signed manifest hash, recorded with a new highest version.
    pub fn activated(&self, slot: &str, version: u64, sha: Option<&str>) -> SlotState {
        let mut next = self.clone();
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
        next
    }

    /// Back to the factory model: the active slot becomes the previous one.
    pub fn on_factory(&self) -> SlotState {
        let mut next = self.clone();
        next.previous = next.active.take();
        next.previous_version = next.active_version;
        next.active_version = 0;
        next
    }

    /// Active and previous swapped (rollback), the highest version kept.
    pub fn rolled_back(&self) -> SlotState {
        let mut next = self.clone();
        std::mem::swap(&mut next.active, &mut next.previous);
        std::mem::swap(&mut next.active_version, &mut next.previous_version);
        next
    }
}

/// The slots folder and its persisted [`SlotState`].
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

    /// See [`SlotState::enrollment_slot`].
    pub fn enrollment_slot(&self) -> Result<&'static str> {
        self.state.enrollment_slot()
    }

    /// Write the bundle's model into the inactive slot (complete and synced before it is
    /// renamed into place). A settings-only bundle takes the graph of the serving model;
    /// the serving model's memory bank carries over.
    pub fn stage(
        &mut self,
        bundle: &Bundle,
        serving: &Model,
    ) -> Result<(String, PathBuf), Rejection> {
        let manifest = bundled_manifest(bundle, serving)?;
        let slot = self.state.inactive().to_string();
        let dir = self
            .write_slot(&slot, "staged", |tmp| {
                for (path, data) in &bundle.files {
                    if let Some(rel) = path.strip_prefix("model/") {
                        durable::write_synced(&tmp.join(rel), data)?;
                    }
                }
                let graph = format!("model/{}", manifest.graph);
                if !bundle.files.contains_key(&graph) {
                    durable::copy_synced(&serving.graph_path(), &tmp.join(&manifest.graph))?;
                }
                durable::write_synced(&tmp.join(MANIFEST), &bundle.manifest_bytes)?;
                // Banks are enrolled on the device and do not travel in bundles: the
                // serving one carries over (the installer enrolls it again if the graph or
                // schedule changed).
                let bank = serving.dir.join("bank");
                if bank.join("bank.toml").is_file() {
                    durable::copy_dir_synced(&bank, &tmp.join("bank"))?;
                }
                Ok(())
            })
            .map_err(|e| reject("install-failed", format!("{e:#}")))?;
        crate::faults::crash_point("renamed");
        Ok((slot, dir))
    }

    /// Write the serving model's files and a new memory bank into a slot that may take an
    /// enrollment (complete and synced before it is renamed into place).
    pub fn stage_enrollment(
        &mut self,
        serving: &Model,
        bank: &mut StoredBank,
        shots: &[Shot],
    ) -> Result<(String, PathBuf)> {
        let slot = self.enrollment_slot()?.to_string();
        let dir = self.write_slot(&slot, "enroll-staged", |tmp| {
            for entry in fs::read_dir(&serving.dir)
                .with_context(|| format!("cannot read {}", serving.dir.display()))?
            {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    durable::copy_synced(&entry.path(), &tmp.join(entry.file_name()))?;
                }
            }
            bank.save(&tmp.join("bank"), shots)
        })?;
        Ok((slot, dir))
    }

    /// Fill `slots/<slot>.tmp/` with `fill`, sync it, then rename it over `slots/<slot>/`.
    /// `staged`: the crash point between the two (for the crash tests).
    fn write_slot(
        &self,
        slot: &str,
        staged: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let slots = self.dir.join("slots");
        let dir = slots.join(slot);
        let tmp = slots.join(format!("{slot}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fill(&tmp)?;
        durable::sync_dir(&tmp);
        crate::faults::crash_point(staged);
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).with_context(|| format!("cannot rename into {}", dir.display()))?;
        durable::sync_dir(&slots);
        Ok(dir)
    }

    /// Make `slot` the active one (atomically); see [`SlotState::activated`].
    pub fn activate(&mut self, slot: &str, version: u64, sha: Option<&str>) -> Result<()> {
        self.persist(self.state.activated(slot, version, sha))
    }

    /// Back to the factory model; see [`SlotState::on_factory`].
    pub fn to_factory(&mut self) -> Result<()> {
        self.persist(self.state.on_factory())
    }

    /// Swap active and previous; see [`SlotState::rolled_back`].
    pub fn swap(&mut self) -> Result<()> {
        self.persist(self.state.rolled_back())
    }

    /// Replace `active.toml` through a synced temporary file (with the `before-activate`
    /// crash point between the two), then take `next` as the state.
    fn persist(&mut self, next: SlotState) -> Result<()> {
        let path = self.dir.join("active.toml");
        let tmp = durable::temporary_sibling(&path);
        durable::write_synced(&tmp, toml::to_string(&next)?.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        crate::faults::crash_point("before-activate");
        fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
        durable::sync_dir(&self.dir);
        self.state = next;
        Ok(())
    }
}

/// The bundle's model manifest, checked before anything is written: present and parseable,
/// no nested folders under `model/`, and a settings-only bundle only for the graph this
/// device runs.
fn bundled_manifest(bundle: &Bundle, serving: &Model) -> Result<Manifest, Rejection> {
    let text = bundle
        .files
        .get("model/manifest.toml")
        .ok_or_else(|| reject("invalid-model", "no model/manifest.toml in the bundle"))?;
    let m: Manifest = toml::from_str(&String::from_utf8_lossy(text))
        .map_err(|e| reject("invalid-model", format!("model/manifest.toml: {e}")))?;
    if let Some(path) = bundle.files.keys().find(|p| {
        p.strip_prefix("model/")
            .is_some_and(|rel| rel.contains('/'))
    }) {
        return Err(reject(
            "invalid-model",
            format!("{path}: nested folders are not allowed"),
        ));
    }
    let settings_only = !bundle.files.contains_key(&format!("model/{}", m.graph));
    if settings_only
        && !serving
            .manifest
            .graph_sha256
            .eq_ignore_ascii_case(&m.graph_sha256)
    {
        return Err(reject(
            "invalid-model",
            "settings-only bundle for a graph this device does not run",
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed(version: u64) -> SlotState {
        SlotState::default().activated("a", version, Some("sha-a"))
    }

    #[test]
    fn activation_moves_the_old_active_to_previous_and_raises_the_highest() {
        let st = installed(3).activated("b", 4, Some("sha-b"));
        assert_eq!(st.active.as_deref(), Some("b"));
        assert_eq!((st.active_version, st.previous_version), (4, 3));
        assert_eq!(st.previous.as_deref(), Some("a"));
        assert_eq!(
            (st.highest_version, st.highest_sha256.as_deref()),
            (4, Some("sha-b"))
        );
        // An enrollment re-activates the serving version without a sha: the highest stays.
        let enrolled = st.activated("a", 4, None);
        assert_eq!(enrolled.highest_sha256.as_deref(), Some("sha-b"));
        assert_eq!(enrolled.previous.as_deref(), Some("b"));
        // Re-activating the active slot keeps the previous one.
        let again = st.activated("b", 5, Some("sha-c"));
        assert_eq!(again.previous.as_deref(), Some("a"));
    }

    #[test]
    fn downgrades_are_refused_but_the_newest_bundle_may_come_again() {
        let st = installed(3).activated("b", 4, Some("sha-b"));
        assert_eq!(st.admits(4, "sha-b").unwrap_err().reason, "downgrade");
        assert_eq!(st.admits(2, "sha-x").unwrap_err().reason, "downgrade");
        assert!(st.admits(5, "sha-x").is_ok());
        let back = st.rolled_back();
        assert_eq!(back.active_version, 3);
        assert_eq!(back.highest_version, 4);
        assert!(back.admits(4, "sha-b").is_ok());
        assert!(back.admits(4, "sha-other").is_err());
    }

    #[test]
    fn enrollment_never_overwrites_the_newest_bundle() {
        let fresh = SlotState::default();
        assert_eq!(fresh.enrollment_slot().unwrap(), "a");
        let st = installed(3).activated("b", 4, Some("sha-b"));
        assert_eq!(st.enrollment_slot().unwrap(), "a");
        // Rolled back to v3: the inactive slot b holds v4, the newest.
        let back = st.rolled_back();
        assert_eq!(back.inactive(), "b");
        assert!(back.enrollment_slot().is_err());
        let factory = installed(3).on_factory();
        assert_eq!(factory.active, None);
        assert_eq!((factory.active_version, factory.previous_version), (0, 3));
    }

    #[test]
    fn state_persists_across_reopen_and_versions_name_slot_folders() {
        let dir = tempfile::tempdir().unwrap();
        let mut slots = Slots::open(dir.path()).unwrap();
        slots.activate("a", 2, Some("sha")).unwrap();
        slots.activate("b", 3, Some("sha3")).unwrap();
        let slots = Slots::open(dir.path()).unwrap();
        assert_eq!(slots.state.active.as_deref(), Some("b"));
        assert_eq!(slots.version_of(&slots.slot_dir("a")), Some(2));
        assert_eq!(slots.version_of(&dir.path().join("elsewhere")), None);
        assert!(!durable::temporary_sibling(&dir.path().join("active.toml")).exists());
        std::fs::write(dir.path().join("active.toml"), "active = 7").unwrap();
        assert!(Slots::open(dir.path()).is_err());
    }
}
