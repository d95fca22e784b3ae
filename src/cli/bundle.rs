//! The workstation side of bundles: `maeday-edge bundle keygen|pack|sign|verify|send`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, QoS};

use crate::config::url_with_client_id;
use crate::daemon::topics::Topics;
use crate::detect::engine::EngineOptions;
use crate::detect::preprocess::load_image;
use crate::model::manifest::Model;
use crate::update::bundle::{
    generate_key, key_id, read_public_key, read_signing_key, sign_and_pack, Abi, Bundle,
    BundleManifest, GoldenFrame, Target,
};
use crate::update::golden::{self, GoldenScorer};
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
    // Scored the way the device checks them (`update::golden`).
    let mut scorer = GoldenScorer::new(model.clone(), EngineOptions::default())?;
    let mut golden = Vec::new();
    for (i, path) in o.golden.iter().enumerate() {
        let score = scorer.score(&load_image(path)?)?;
        let file = golden::bundle_path(i, path);
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
    /// The devices' `mqtt.topic_prefix`.
    pub topic_prefix: String,
}

/// Publish the chunks (QoS 1). For one device, wait for its verdict on
/// `maeday/<device>/bundle/status`, re-sending chunks it reports missing.
/// Returns the final status (JSON) for a device, `None` for a group.
pub fn send(o: &SendOptions) -> Result<Option<serde_json::Value>> {
    let bytes =
        fs::read(&o.bundle).with_context(|| format!("cannot read {}", o.bundle.display()))?;
    let chunks = split(&bytes, o.chunk_bytes);
    crate::config::check_topic_prefix("--topic-prefix", &o.topic_prefix)?;
    let topics = |d: &str| Topics::with_prefix(&o.topic_prefix, d, &[]);
    let topic = match (&o.device, &o.group) {
        (Some(d), None) => topics(d).bundle_chunk(),
        // A group topic names no device: `<prefix>/fleet/<group>/bundle/chunk`.
        (None, Some(g)) => topics("-").group_chunk(g),
        _ => bail!("give exactly one of --device and --group"),
    };
    let status_topic = o.device.as_ref().map(|d| topics(d).bundle_status());
    let (client, inbox) = Inbox::connect(o, chunks.len(), status_topic.as_deref())?;
    let publish = |i: usize| -> Result<()> {
        client.publish(topic.clone(), QoS::AtLeastOnce, false, chunks[i].encode())?;
        Ok(())
    };
    for i in 0..chunks.len() {
        publish(i)?;
    }
    let total = &chunks[0].bundle_sha256;
    eprintln!(
        "sent {} chunks ({} bytes, bundle {}) to {topic}",
        chunks.len(),
        bytes.len(),
        &total[..12]
    );
    match status_topic {
        Some(status_topic) => {
            let verdict = Verdict {
                status_topic: &status_topic,
                bundle_sha256: total,
                chunks: chunks.len(),
                wait: o.wait,
            };
            inbox.await_verdict(&verdict, publish).map(Some)
        }
        None => {
            inbox.flush(chunks.len());
            Ok(None)
        }
    }
}

/// What the broker sends back to the sender: acks and the device's statuses.
struct Inbox {
    conn: Connection,
}

/// What `send` waits for from one device.
struct Verdict<'a> {
    status_topic: &'a str,
    bundle_sha256: &'a str,
    chunks: usize,
    wait: Duration,
}

impl Inbox {
    /// Connect, and subscribe to `status_topic` if any; returns once the broker
    /// acknowledged both, so no verdict is missed.
    fn connect(
        o: &SendOptions,
        chunks: usize,
        status_topic: Option<&str>,
    ) -> Result<(Client, Inbox)> {
        let id = format!("maeday-bundle-send-{}", std::process::id());
        let mut opts = MqttOptions::parse_url(url_with_client_id(&o.mqtt_url, &id))
            .map_err(|e| anyhow::anyhow!("MQTT URL {:?}: {e}", o.mqtt_url))?;
        opts.set_max_packet_size(o.chunk_bytes + (64 << 10), o.chunk_bytes + (64 << 10));
        let (client, mut conn) = Client::new(opts, chunks + 16);
        if let Some(t) = status_topic {
            client.subscribe(t, QoS::AtLeastOnce)?;
        }
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
        Ok((client, Inbox { conn }))
    }

    /// Let the client flush `published` publishes (up to 5 s) before leaving.
    fn flush(mut self, published: usize) {
        let until = Instant::now() + Duration::from_secs(5);
        let mut acked = 0;
        while acked < published && Instant::now() < until {
            if let Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) =
                self.conn.recv_timeout(Duration::from_millis(100))
            {
                acked += 1;
            }
        }
    }

    /// Wait for the device's verdict on the bundle. Chunks lost on the way (the device was
    /// reconnecting) show up as `missing` in its status; when nothing arrives for a while,
    /// re-send those (or all) through `publish`.
    fn await_verdict(
        mut self,
        v: &Verdict,
        publish: impl Fn(usize) -> Result<()>,
    ) -> Result<serde_json::Value> {
        let until = Instant::now() + v.wait;
        let mut missing: Option<Vec<usize>> = None;
        let mut quiet_since = Instant::now();
        while Instant::now() < until {
            if quiet_since.elapsed() > Duration::from_secs(5) {
                let again = missing.clone().unwrap_or_else(|| (0..v.chunks).collect());
                eprintln!("no news from the device: re-sending {} chunks", again.len());
                for i in again {
                    publish(i)?;
                }
                quiet_since = Instant::now();
            }
            let Some(st) = self.next_status(v) else {
                continue;
            };
            quiet_since = Instant::now();
            match st["state"].as_str() {
                Some("installed") | Some("rejected") => {
                    eprintln!("device: {st}");
                    return Ok(st);
                }
                // Chunks bigger than the device takes will never get through: say so now.
                Some("chunk-rejected") if st["reason"] == "too-large" => {
                    eprintln!("device: {st} (use a smaller --chunk-bytes)");
                    return Ok(st);
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
        bail!("no verdict from the device within {:?}", v.wait)
    }

    /// The next status of this bundle within 200 ms, if one came (JSON or CBOR).
    fn next_status(&mut self, v: &Verdict) -> Option<serde_json::Value> {
        let Ok(Ok(Event::Incoming(Incoming::Publish(p)))) =
            self.conn.recv_timeout(Duration::from_millis(200))
        else {
            return None;
        };
        if p.topic != v.status_topic {
            return None;
        }
        let st: serde_json::Value = serde_json::from_slice(&p.payload)
            .or_else(|_| ciborium::from_reader(&p.payload[..]))
            .unwrap_or_default();
        (st["bundle_sha256"] == v.bundle_sha256).then_some(st)
    }
}

pub struct CommandOptions {
    pub key: PathBuf,
    pub device: String,
    /// Publish here; `None`: print the signed command only (for another MQTT client).
    pub mqtt_url: Option<String>,
    /// Default: the clock in milliseconds (the device wants it above the last one).
    pub seq: Option<u64>,
    pub words: Vec<String>,
    /// The device's `mqtt.topic_prefix`.
    pub topic_prefix: String,
}

/// Sign a serving-changing command (`rollback`, `enroll [frames] [camera]`) for one device
/// and publish it on `maeday/<device>/command` (QoS 1, not retained). Prints the payload.
pub fn command(o: &CommandOptions) -> Result<()> {
    let key = read_signing_key(&o.key)?;
    let text = o.words.join(" ");
    ensure!(!text.trim().is_empty(), "give the command, e.g. rollback");
    crate::config::check_topic_prefix("--topic-prefix", &o.topic_prefix)?;
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
    let topic = Topics::with_prefix(&o.topic_prefix, &o.device, &[]).command();
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
