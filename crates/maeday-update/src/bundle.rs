//! Retrain bundles: a new model and/or settings, signed on the workstation, verified on the
//! device before anything is installed.
//!
//! A bundle is a tar archive:
//! - `bundle.toml`: the [`BundleManifest`]: version, target, runtime ABI, the sha256 of
//!   every other file, golden frames with their expected scores;
//! - `bundle.sig`: an ed25519 signature (hex) over the exact bytes of `bundle.toml`;
//! - `model/manifest.toml` and, unless it is a settings-only bundle, `model/<graph>.onnx`;
//! - `golden/*.png`: frames the device scores before switching.
//!
//! Only the manifest is signed; it pins every file by hash, so a changed byte anywhere is
//! caught. Parsing is defensive (it is fed untrusted bytes from the network and fuzzed):
//! size and entry limits, plain relative paths only, regular files only.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "bundle.toml";
pub const SIGNATURE: &str = "bundle.sig";
pub const FORMAT: u32 = 1;
const MAX_ENTRIES: usize = 256;
const MAX_MANIFEST_BYTES: u64 = 256 << 10;

/// Why a bundle was refused: a short machine-readable reason and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of: `corrupt`, `unknown-key`, `bad-signature`, `not-for-this-device`,
    /// `downgrade`, `tampered`, `wrong-abi`, `invalid-model`, `golden-mismatch`,
    /// `too-large`, `install-failed`.
    pub reason: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

impl std::error::Error for Rejection {}

pub fn reject(reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// Who a bundle is for: device ids and/or fleet groups (at least one entry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What the graph expects and produces: a device only installs a bundle whose ABI equals
/// the one it runs (a different input size or mask count is a firmware change).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Abi {
    pub input_size: usize,
    pub patch_size: usize,
    /// Masks per frame (N) and visible patches per mask (K).
    pub masks: usize,
    pub keep: usize,
    /// `reconstruction` or `anomaly_map`.
    pub output: String,
}

impl Abi {
    pub fn of(m: &crate::model::manifest::Manifest) -> Abi {
        Abi {
            input_size: m.input.size,
            patch_size: m.input.patch_size,
            masks: m.masks.n,
            keep: m.masks.keep,
            output: m.output.kind.tensor_name().to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GoldenFrame {
    /// Path inside the bundle (`golden/...`).
    pub file: String,
    /// The image score the workstation computed.
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    /// Monotonic: a device refuses a version at or below the highest it installed.
    pub version: u64,
    #[serde(default)]
    pub description: String,
    pub created_unix_s: u64,
    /// First 16 hex digits of the sha256 of the signing public key.
    pub key_id: String,
    pub target: Target,
    pub abi: Abi,
    /// Relative tolerance on golden scores: |device - expected| <= tol * |expected| + 1e-6.
    pub golden_tolerance: f32,
    #[serde(default)]
    pub golden: Vec<GoldenFrame>,
    /// sha256 (hex) of every file in the bundle except `bundle.toml` and `bundle.sig`.
    pub files: BTreeMap<String, String>,
}

/// A parsed (not yet verified) bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: BundleManifest,
    /// The exact signed bytes.
    pub manifest_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub files: BTreeMap<String, Vec<u8>>,
}

pub use crate::durable::sha256_hex;

pub fn key_id(key: &VerifyingKey) -> String {
    sha256_hex(key.as_bytes())[..16].to_string()
}

/// A path a bundle may contain: relative, plain components, a small character set.
fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 200
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

impl Bundle {
    /// Parse a bundle file's bytes. Never panics; every failure is a [`Rejection`].
    pub fn parse(bytes: &[u8], max_bytes: u64) -> Result<Bundle, Rejection> {
        if bytes.len() as u64 > max_bytes {
            return Err(reject(
                "too-large",
                format!("{} bytes, the limit is {max_bytes}", bytes.len()),
            ));
        }
        let corrupt = |e: std::io::Error| reject("corrupt", format!("not a readable bundle: {e}"));
        let mut archive = tar::Archive::new(bytes);
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            if files.len() >= MAX_ENTRIES {
                return Err(reject("corrupt", "too many files"));
            }
            let kind = entry.header().entry_type();
            let path = entry
                .path()
                .map_err(corrupt)?
                .to_str()
                .map(str::to_string)
                .ok_or_else(|| reject("corrupt", "a file name is not UTF-8"))?;
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(reject("corrupt", format!("{path:?} is not a regular file")));
            }
            if !valid_path(&path) {
                return Err(reject("corrupt", format!("bad file name {path:?}")));
            }
            let size = entry.size();
            total = total.saturating_add(size);
            if total > max_bytes {
                return Err(reject("too-large", "the files add up past the limit"));
            }
            let mut data = Vec::with_capacity(size.min(max_bytes) as usize);
            entry.read_to_end(&mut data).map_err(corrupt)?;
            if data.len() as u64 != size {
                return Err(reject("corrupt", format!("{path} is truncated")));
            }
            if files.insert(path.clone(), data).is_some() {
                return Err(reject("corrupt", format!("{path} appears twice")));
            }
        }
        let manifest_bytes = files
            .remove(MANIFEST)
            .ok_or_else(|| reject("corrupt", "no bundle.toml (truncated?)"))?;
        if manifest_bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(reject("corrupt", "bundle.toml is too large"));
        }
        let sig_text = files
            .remove(SIGNATURE)
            .ok_or_else(|| reject("bad-signature", "no bundle.sig: the bundle is not signed"))?;
        let signature = hex::decode(String::from_utf8_lossy(&sig_text).trim())
            .map_err(|e| reject("bad-signature", format!("bundle.sig is not hex: {e}")))?;
        let text = std::str::from_utf8(&manifest_bytes)
            .map_err(|_| reject("corrupt", "bundle.toml is not UTF-8"))?;
        let manifest: BundleManifest =
            toml::from_str(text).map_err(|e| reject("corrupt", format!("bundle.toml: {e}")))?;
        if manifest.format != FORMAT {
            return Err(reject(
                "corrupt",
                format!(
                    "bundle format {} (this runtime reads {FORMAT})",
                    manifest.format
                ),
            ));
        }
        Ok(Bundle {
            manifest,
            manifest_bytes,
            signature,
            files,
        })
    }

    /// Check the signature against the trusted keys, then every file against its pinned
    /// hash (and that nothing unpinned rides along).
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<(), Rejection> {
        let m = &self.manifest;
        let key = trusted
            .iter()
            .find(|k| key_id(k) == m.key_id)
            .ok_or_else(|| {
                reject(
                    "unknown-key",
                    format!(
                        "signed by key {} which this device does not trust",
                        m.key_id
                    ),
                )
            })?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| reject("bad-signature", "bundle.sig is not 64 bytes"))?;
        key.verify_strict(&self.manifest_bytes, &Signature::from_bytes(&sig))
            .map_err(|_| reject("bad-signature", "the signature does not match bundle.toml"))?;
        for (path, want) in &m.files {
            let data = self
                .files
                .get(path)
                .ok_or_else(|| reject("tampered", format!("{path} is missing")))?;
            let got = sha256_hex(data);
            if !got.eq_ignore_ascii_case(want) {
                return Err(reject(
                    "tampered",
                    format!("{path}: sha256 {got}, signed {want}"),
                ));
            }
        }
        if let Some(extra) = self.files.keys().find(|p| !m.files.contains_key(*p)) {
            return Err(reject(
                "tampered",
                format!("{extra} is not in the signed file list"),
            ));
        }
        for g in &m.golden {
            if !m.files.contains_key(&g.file) {
                return Err(reject(
                    "corrupt",
                    format!("golden frame {} is not in the bundle", g.file),
                ));
            }
        }
        Ok(())
    }

    /// Whether the bundle targets this device (by id or one of its groups).
    pub fn targets(&self, device_id: &str, groups: &[String]) -> bool {
        let t = &self.manifest.target;
        t.devices.iter().any(|d| d == device_id) || t.groups.iter().any(|g| groups.contains(g))
    }
}

/// Serialise a bundle into its tar bytes (deterministic order and headers).
pub fn write_tar(
    manifest_bytes: &[u8],
    signature_hex: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut h, path, data)
            .with_context(|| format!("cannot add {path} to the bundle"))
    };
    add(MANIFEST, manifest_bytes)?;
    add(SIGNATURE, signature_hex.as_bytes())?;
    for (path, data) in files {
        add(path, data)?;
    }
    Ok(builder.into_inner()?)
}

/// Sign `manifest` with `key` and write the bundle bytes.
pub fn sign_and_pack(
    manifest: &mut BundleManifest,
    files: &BTreeMap<String, Vec<u8>>,
    key: &SigningKey,
) -> Result<Vec<u8>> {
    manifest.key_id = key_id(&key.verifying_key());
    manifest.files = files
        .iter()
        .map(|(p, d)| (p.clone(), sha256_hex(d)))
        .collect();
    let text = toml::to_string(manifest)?;
    let sig = key.sign(text.as_bytes());
    write_tar(text.as_bytes(), &hex::encode(sig.to_bytes()), files)
}

/// Keys are stored as hex: `<name>.key` (the 32-byte secret seed), `<name>.pub`.
pub fn generate_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A key file: 32 bytes as hex (what `generate_key`'s callers write).
fn read_hex32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a 32-byte hex {what}", path.display()))
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_hex32(path, "signing key")?))
}

pub fn read_public_key(path: &Path) -> Result<VerifyingKey> {
    VerifyingKey::from_bytes(&read_hex32(path, "public key")?)
        .with_context(|| format!("{} is not a valid ed25519 public key", path.display()))
}
