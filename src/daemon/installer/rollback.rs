//! `rollback`: serve the previous slot again, or the factory model when the only slot was
//! enrolled on it (before any bundle). The highest installed version is kept, so the bundle
//! rolled back from may be sent again but nothing older.

use std::path::PathBuf;

use crate::daemon::installer::{BundleStatus, Handover, Installer, SlotChange};
use crate::model::manifest::Model;
use crate::update::bundle::{reject, Rejection};

/// Where a rollback goes.
struct Target {
    dir: PathBuf,
    /// For errors: `previous slot` or `factory model`.
    what: &'static str,
    version: Option<u64>,
    change: SlotChange,
}

impl Installer {
    pub(super) fn rollback(&mut self) {
        let result = self.rollback_target().and_then(|t| {
            let model = Model::open(&t.dir)
                .map_err(|e| reject("invalid-model", format!("{}: {e:#}", t.what)))?;
            self.hand_over(Handover {
                model,
                detector: None,
                version: t.version,
                change: t.change,
            })?;
            Ok(t.version)
        });
        match result {
            Ok(version) => self.status(&BundleStatus {
                state: "rolled-back",
                version,
                ..Default::default()
            }),
            Err(r) => self.rejected("", None, &r),
        }
    }

    fn rollback_target(&self) -> Result<Target, Rejection> {
        let st = &self.slots.state;
        match (&st.previous, &st.active) {
            (Some(prev), _) => Ok(Target {
                dir: self.slots.slot_dir(prev),
                what: "previous slot",
                version: Some(st.previous_version).filter(|v| *v > 0),
                change: SlotChange::Rollback,
            }),
            (None, Some(_)) => Ok(Target {
                dir: self.s.factory.clone(),
                what: "factory model",
                version: None,
                change: SlotChange::Factory,
            }),
            (None, None) => Err(reject("install-failed", "no previous slot to roll back to")),
        }
    }
}
