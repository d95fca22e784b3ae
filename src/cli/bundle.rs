//! The workstation side of bundles: `maeday-edge bundle keygen|pack|sign|verify|send`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

use crate::config::url_with_client_id;
use crate::detect::detector::{Detector, DetectorOptions};
use crate::detect::preprocess::load_image;
use crate::model::manifest::Model;
use crate::update::bundle::{
    generate_key, key_id, read_public_key, read_signing_key, sign_and_pack, Abi, Bundle,
    BundleManifest, GoldenFrame, Target,
};
use crate::update::transfer::split;

/// Write `<out>.key` (secret, mode 0600) and `<out>.pub`.
pub fn keygen(out: &Path) -> Result<()> {
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    ensure!(
        !secret.exists() && !public.exists(),
        "{} or {} exists: not overwriting a key",
        secret.display(),
        public.display()
    );
    let key = generate_key()?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .with_context(|| format!("cannot create {}", secret.display()))?;
        writeln!(f, "{}", hex::encode(key.to_bytes()))?;
    }
    fs::write(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )?;
    println!(
        "key {} -> {} (keep secret), {} (give to devices: bundles.trusted_keys)",
        key_id(&key.verifying_key()),
        secret.display(),
        public.display()
    );
    Ok(())
}

pub struct PackOptions {
    pub model: PathBuf,
    pub key: PathBuf,
    pub version: u64,
    pub devices: Vec<String>,
    pub groups: Vec<String>,
    pub golden: Vec<PathBuf>,
    pub tolerance: f32,
    pub settings_only: bool,
    pub description: String,
    pub out: PathBuf,
}

/// Build, score the golden frames with this very runtime, sign, write.
pub fn pack(o: &PackOptions) -> Result<()> {
    ensure!(
        !o.devices.is_empty() || !o.groups.is_empty(),
        "give at least one --device or --group"
    );
    let key = read_signing_key(&o.key)?;
    let model = Model::open(&o.model)?;
    let mut files = BTreeMap::new();
    files.insert(
        "model/manifest.toml".to_string(),
        fs::read(model.manifest_path())?,
    );
    if !o.settings_only {
        files.insert(
            format!("model/{}", model.manifest.graph),
            fs::read(model.graph_path())?,
        );
    }
    // Golden scores are MAEDAY's: banks are enrolled per device and do not travel in bundles.
    let golden_opts = DetectorOptions {
        scorer: Some(crate::detect::fuse::ScorerKind::Maeday),
        ..Default::default()
    };
    let mut detector = Detector::new(model.clone(), &golden_opts)?;
    let mut golden = Vec::new();
    for (i, path) in o.golden.iter().enumerate() {
        let frame = load_image(path)?;
        let score = detector.detect(&frame)?.score;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let file = format!("golden/{i}-{clean}");
        files.insert(file.clone(), fs::read(path)?);
        golden.push(GoldenFrame { file, score });
    }
    let mut manifest = BundleManifest {
        format: crate::update::bundle::FORMAT,
        version: o.version,
        description: o.description.clone(),
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        key_id: String::new(),
        target: Target {
            devices: o.devices.clone(),
            groups: o.groups.clone(),
        },
        abi: Abi::of(&model.manifest),
        golden_tolerance: o.tolerance,
        golden,
        files: BTreeMap::new(),
    };
    let bytes = sign_and_pack(&mut manifest, &files, &key)?;
    fs::write(&o.out, &bytes).with_context(|| format!("cannot write {}", o.out.display()))?;
    println!(
        "bundle v{} ({} bytes, {} files, key {}) -> {}",
        o.version,
        bytes.len(),
        files.len(),
        manifest.key_id,
        o.out.display()
    );
    Ok(())
}

/// Re-sign an existing bundle with another key (e.g. on an offline signing machine).
pub fn sign(bundle: &Path, key: &Path, out: &Path) -> Result<()> {
    let key = read_signing_key(key)?;
    let bytes = fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let b = Bundle::parse(&bytes, u64::MAX).map_err(anyhow::Error::from)?;
    let mut manifest = b.manifest.clone();
    let new = sign_and_pack(&mut manifest, &b.files, &key)?;
    fs::write(out, new)?;
    println!("signed with key {} -> {}", manifest.key_id, out.display());
    Ok(())
}

/// Verify against public keys; prints what the bundle is.
pub fn verify(bundle: &Path, trusted: &[PathBuf]) -> Result<()> {
    let keys = trusted
        .iter()
        .map(|p| read_public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let bytes = fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let b = Bundle::parse(&bytes, u64::MAX).map_err(anyhow::Error::from)?;
    b.verify(&keys).map_err(anyhow::Error::from)?;
    let m = &b.manifest;
    println!(
        "ok: v{} for {:?} {:?}, key {}, ABI {:?}, {} files, {} golden frames",
        m.version,
        m.target.devices,
        m.target.groups,
        m.key_id,
        m.abi,
        m.files.len(),
        m.golden.len()
    );
    Ok(())
}

pub struct SendOptions {
    pub bundle: PathBuf,
    pub mqtt_url: String,
    pub device: Option<String>,
    pub group: Option<String>,
    pub chunk_bytes: usize,
    pub wait: Duration,
}

/// Publish the chunks (QoS 1). For one device, wait for its verdict on
/// `maeday/<device>/bundle/status`, re-sending chunks it reports missing.
/// Returns the final status (JSON) for a device, `None` for a group.
pub fn send(o: &SendOptions) -> Result<Option<serde_json::Value>> {
    let bytes =
        fs::read(&o.bundle).with_context(|| format!("cannot read {}", o.bundle.display()))?;
    let chunks = split(&bytes, o.chunk_bytes);
    let topic = match (&o.device, &o.group) {
        (Some(d), None) => format!("maeday/{d}/bundle/chunk"),
        (None, Some(g)) => format!("maeday/fleet/{g}/bundle/chunk"),
        _ => bail!("give exactly one of --device and --group"),
    };
    let id = format!("maeday-bundle-send-{}", std::process::id());
    let mut opts = MqttOptions::parse_url(url_with_client_id(&o.mqtt_url, &id))
        .map_err(|e| anyhow::anyhow!("MQTT URL {:?}: {e}", o.mqtt_url))?;
    opts.set_max_packet_size(o.chunk_bytes + (64 << 10), o.chunk_bytes + (64 << 10));
    let (client, mut conn) = Client::new(opts, chunks.len() + 16);
    let status_topic = o
        .device
        .as_ref()
        .map(|d| format!("maeday/{d}/bundle/status"));
    if let Some(t) = &status_topic {
        client.subscribe(t.clone(), QoS::AtLeastOnce)?;
    }
    let total = chunks[0].bundle_sha256.clone();
    // Wait for the SUBACK (device targets) before sending, so no verdict is missed.
    let until = Instant::now() + Duration::from_secs(30);
    let mut ready = status_topic.is_none();
    let mut connected = false;
    while !(ready && connected) {
        ensure!(
            Instant::now() < until,
            "could not connect to {}",
            o.mqtt_url
        );
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => connected = true,
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => ready = true,
            Ok(Err(e)) => bail!("MQTT: {e}"),
            _ => {}
        }
    }
    let publish = |i: usize| -> Result<()> {
        client.publish(topic.clone(), QoS::AtLeastOnce, false, chunks[i].encode())?;
        Ok(())
    };
    for i in 0..chunks.len() {
        publish(i)?;
    }
    eprintln!(
        "sent {} chunks ({} bytes, bundle {}) to {topic}",
        chunks.len(),
        bytes.len(),
        &total[..12]
    );
    let Some(status_topic) = status_topic else {
        // Let the client flush the publishes before leaving.
        let until = Instant::now() + Duration::from_secs(5);
        let mut acked = 0;
        while acked < chunks.len() && Instant::now() < until {
            if let Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) =
                conn.recv_timeout(Duration::from_millis(100))
            {
                acked += 1;
            }
        }
        return Ok(None);
    };
    // Wait for the verdict. Chunks lost on the way (the device was reconnecting) show up
    // as `missing` in its status; when nothing arrives for a while, re-send those (or all).
    let until = Instant::now() + o.wait;
    let mut missing: Option<Vec<usize>> = None;
    let mut quiet_since = Instant::now();
    while Instant::now() < until {
        if quiet_since.elapsed() > Duration::from_secs(5) {
            let again = missing
                .clone()
                .unwrap_or_else(|| (0..chunks.len()).collect());
            eprintln!("no news from the device: re-sending {} chunks", again.len());
            for i in again {
                publish(i)?;
            }
            quiet_since = Instant::now();
        }
        let Ok(ev) = conn.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(Event::Incoming(Incoming::Publish(p))) = ev else {
            continue;
        };
        if p.topic != status_topic {
            continue;
        }
        let st: serde_json::Value = serde_json::from_slice(&p.payload)
            .or_else(|_| ciborium::from_reader(&p.payload[..]))
            .unwrap_or_default();
        if st["bundle_sha256"] != total.as_str() {
            continue;
        }
        quiet_since = Instant::now();
        match st["state"].as_str() {
            Some("installed") | Some("rejected") => {
                eprintln!("device: {st}");
                return Ok(Some(st));
            }
            // Chunks bigger than the device takes will never get through: say so now.
            Some("chunk-rejected") if st["reason"] == "too-large" => {
                eprintln!("device: {st} (use a smaller --chunk-bytes)");
                return Ok(Some(st));
            }
            Some("receiving") => {
                missing = st["missing"].as_array().map(|m| {
                    m.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|i| i as usize)
                        .collect()
                });
            }
            _ => {}
        }
    }
    bail!("no verdict from the device within {:?}", o.wait)
}

pub struct CommandOptions {
    pub key: PathBuf,
    pub device: String,
    /// Publish here; `None`: print the signed command only (for another MQTT client).
    pub mqtt_url: Option<String>,
    /// Default: the clock in milliseconds (the device wants it above the last one).
    pub seq: Option<u64>,
    pub words: Vec<String>,
}

/// Sign a serving-changing command (`rollback`, `enroll [frames] [camera]`) for one device
/// and publish it on `maeday/<device>/command` (QoS 1, not retained). Prints the payload.
pub fn command(o: &CommandOptions) -> Result<()> {
    let key = read_signing_key(&o.key)?;
    let text = o.words.join(" ");
    ensure!(!text.trim().is_empty(), "give the command, e.g. rollback");
    let seq = match o.seq {
        Some(s) => s,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis() as u64,
    };
    let payload = crate::update::command::sign(&key, &o.device, seq, &text).encode();
    println!("{}", String::from_utf8_lossy(&payload));
    let Some(url) = &o.mqtt_url else {
        return Ok(());
    };
    let id = format!("maeday-bundle-command-{}", std::process::id());
    let opts = MqttOptions::parse_url(url_with_client_id(url, &id))
        .map_err(|e| anyhow::anyhow!("MQTT URL {url:?}: {e}"))?;
    let (client, mut conn) = Client::new(opts, 16);
    let topic = format!("maeday/{}/command", o.device);
    client.publish(topic.clone(), QoS::AtLeastOnce, false, payload)?;
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => {
                eprintln!("published to {topic}");
                return Ok(());
            }
            Ok(Err(e)) => bail!("MQTT: {e}"),
            _ => {}
        }
    }
    bail!("the broker at {url} did not take the command within 30 s")
}
