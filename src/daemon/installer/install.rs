//! Installing a bundle: chunks in, then verify, stage into the inactive slot, load in the
//! background, check the golden frames, hand over, persist. Any refusal leaves the serving
//! model and the persisted choice untouched, and is published with its reason.

use std::time::Instant;

use crate::daemon::installer::{BundleStatus, Handover, Installer, SlotChange};
use crate::durable;
use crate::model::manifest::Model;
use crate::update::bundle::{reject, Abi, Bundle, Rejection};
use crate::update::golden::GoldenScorer;
use crate::update::transfer::{Chunk, Progress};

impl Installer {
    /// One message on a bundle chunk topic: store it, report progress, install the bundle
    /// it completes.
    pub(super) fn on_chunk(&mut self, bytes: &[u8]) {
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
                        bundle_sha256: sha,
                        received: Some(received),
                        count: Some(count),
                        missing,
                        ..Default::default()
                    });
                }
            }
            Ok(Progress::Complete(bytes)) => self.on_complete(sha, &bytes),
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

    /// A transfer is complete: install the bundle and publish the verdict.
    fn on_complete(&mut self, sha: String, bytes: &[u8]) {
        let started = Instant::now();
        // Parsed once; the version (if it parses) goes into a refusal too.
        let parsed = Bundle::parse(bytes, self.s.max_bundle_bytes);
        let version = parsed.as_ref().ok().map(|b| b.manifest.version);
        let result = parsed.and_then(|b| self.install(&b));
        // Late chunks of a decided bundle are dropped; one that failed for a local reason
        // (disk, thread) may be sent again.
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

    /// Verify, stage, load, check golden frames, hand over, persist. Any failure leaves
    /// the serving model and the persisted choice untouched.
    pub fn install(&mut self, bundle: &Bundle) -> Result<u64, Rejection> {
        let sha = self.admit(bundle)?;
        let m = &bundle.manifest;
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
        self.hand_over(Handover {
            model,
            detector: Some(detector),
            version: Some(m.version),
            change: SlotChange::Activate {
                slot,
                sha: Some(sha),
            },
        })?;
        Ok(m.version)
    }

    /// The checks before anything is written: signature and file hashes, target, no
    /// downgrade, the device's ABI. Returns the sha256 of the signed manifest.
    fn admit(&self, bundle: &Bundle) -> Result<String, Rejection> {
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
        self.slots.state.admits(m.version, &sha)?;
        let device_abi = Abi::of(&self.serving.manifest);
        if m.abi != device_abi {
            return Err(reject(
                "wrong-abi",
                format!("bundle {:?}, device {:?}", m.abi, device_abi),
            ));
        }
        Ok(sha)
    }

    /// Load the staged model (in the background: the serving one keeps running), score the
    /// golden frames exactly as the workstation did, and return the detector to serve with.
    fn golden_check(
        &self,
        bundle: &Bundle,
        model: Model,
    ) -> Result<crate::detect::detector::Detector, Rejection> {
        let load =
            |e: anyhow::Error| reject("invalid-model", format!("cannot load the graph: {e:#}"));
        let mut golden =
            GoldenScorer::new(model.clone(), self.s.serving.engine.clone()).map_err(load)?;
        golden.check(bundle)?;
        golden.into_serving(model, &self.s.serving).map_err(load)
    }
}
