//! A device with `[bundles]` for the bundle and control-plane tests (`tests/bundles.rs`,
//! `tests/hostile/control.rs`): a trusted workstation key, the device's config, and the
//! daemon process, killed if a test fails before stopping it.
#![allow(dead_code)] // each test crate uses a part of it

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use maeday_edge::model::manifest::Model;
use maeday_edge::update::bundle::{self, Abi, BundleManifest, Target};

use super::repo;

/// A new workstation key, its public half written to `dir/trusted.pub` (which
/// [`device_config`] trusts).
pub fn trusted_key(dir: &Path) -> SigningKey {
    let key = maeday_edge::update::bundle::generate_key().unwrap();
    std::fs::write(
        dir.join("trusted.pub"),
        hex::encode(key.verifying_key().as_bytes()),
    )
    .unwrap();
    key
}

/// The parts of a settings-only bundle for device `dev` that sets `model`'s image
/// threshold (seen in every result), with no golden frames: the manifest to sign and its
/// files.
pub fn settings_bundle(
    model: &Model,
    version: u64,
    image_threshold: f32,
) -> (BundleManifest, BTreeMap<String, Vec<u8>>) {
    let text = std::fs::read_to_string(model.manifest_path()).unwrap();
    let manifest = format!("{text}\n[thresholds]\nimage = {image_threshold}\npixel = 5.0\n");
    let files = BTreeMap::from([("model/manifest.toml".to_string(), manifest.into_bytes())]);
    let m = BundleManifest {
        format: bundle::FORMAT,
        version,
        description: "test".into(),
        created_unix_s: 0,
        key_id: String::new(),
        target: Target {
            devices: vec!["dev".into()],
            groups: vec![],
        },
        abi: Abi::of(&model.manifest),
        golden_tolerance: 0.01,
        golden: vec![],
        files: BTreeMap::new(),
    };
    (m, files)
}

/// Device `dev`: one replay camera on a bundled photo at `fps`, N = 2, JSON, the broker on
/// `port`, spool and bundle state under `dir`, trusting `dir/trusted.pub`; `bundles_extra`
/// is appended to `[bundles]`.
pub fn device_config(dir: &Path, port: u16, fps: f64, bundles_extra: &str) -> PathBuf {
    let text = format!(
        r#"
device_id = "dev"
[model]
masks = 2
threads = 1
[[camera]]
name = "cam"
source = {{ kind = "replay", path = "{}", fps = {fps}, loop = true }}
[output]
format = "json"
metrics_interval_s = 0
[mqtt]
url = "mqtt://127.0.0.1:{port}"
spool = {{ dir = "{}" }}
shutdown_grace_s = 5
[bundles]
state_dir = "{}"
trusted_keys = ["{}"]
max_chunk_bytes = 65536
{bundles_extra}
"#,
        repo().join("models/samples/coins.png").display(),
        dir.join("spool").display(),
        dir.join("state").display(),
        dir.join("trusted.pub").display()
    );
    let path = dir.join("device.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running device, killed if the test fails before stopping it.
pub struct Device(Option<Child>);

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Device {
    pub fn spawn(cmd: &mut Command) -> Device {
        Device(Some(cmd.spawn().expect("start the device")))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }

    /// SIGTERM, and its output once it has exited (within 60 s).
    pub fn stop(mut self) -> Output {
        let mut child = self.0.take().expect("running");
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let until = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "device did not stop in 60 s; stderr:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().unwrap()
    }
}
