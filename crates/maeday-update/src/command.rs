//! Signed commands: who may change what a device serves.
//!
//! The commands that change the serving model (`rollback`, `enroll ...`) are accepted only
//! when signed by a bundle key the device trusts (`[bundles] trusted_keys`), because anyone
//! who can publish on `maeday/<id>/command` could otherwise downgrade the model. A signed
//! command is a JSON object
//! `{"device": "line-3", "seq": 1718000000000, "command": "rollback", "key_id": "...",
//! "sig": "<hex>"}` where `sig` is ed25519 over
//! `maeday-command/1\n<device>\n<seq>\n<command>`:
//! - bound to one device (a command captured for `line-3` does nothing on `line-4`);
//! - replay-proof: `seq` must be above the last accepted one, which is persisted in
//!   `<state_dir>/command-seq` before the command runs (`bundle command` uses the
//!   workstation's clock in milliseconds, so it only grows).
//!
//! `metrics` is read-only and stays unsigned.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::bundle::key_id;

/// Signed commands are small: anything larger is refused before it is parsed.
pub const MAX_COMMAND_BYTES: usize = 4096;
const DOMAIN: &str = "maeday-command/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedCommand {
    pub device: String,
    pub seq: u64,
    pub command: String,
    pub key_id: String,
    pub sig: String,
}

fn signed_bytes(device: &str, seq: u64, command: &str) -> Vec<u8> {
    format!("{DOMAIN}\n{device}\n{seq}\n{command}").into_bytes()
}

/// Sign `command` for `device` with sequence number `seq`.
pub fn sign(key: &SigningKey, device: &str, seq: u64, command: &str) -> SignedCommand {
    let sig = key.sign(&signed_bytes(device, seq, command));
    SignedCommand {
        device: device.to_string(),
        seq,
        command: command.to_string(),
        key_id: key_id(&key.verifying_key()),
        sig: hex::encode(sig.to_bytes()),
    }
}

impl SignedCommand {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always encodes")
    }
}

/// A command as it arrived, once its origin is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    /// Plain text: anyone on the broker may have sent it.
    Unsigned(String),
    /// Signed by a trusted key for this device, fresh (its seq is now persisted).
    Signed(String),
    /// Looked like a signed command but is not acceptable: what it asked (if readable), why.
    Refused {
        command: Option<String>,
        why: String,
    },
}

/// Checks commands against the trusted keys and the persisted sequence number.
pub struct CommandAuth {
    device_id: String,
    trusted: Vec<VerifyingKey>,
    seq_path: PathBuf,
    last_seq: u64,
}

impl CommandAuth {
    pub fn open(device_id: &str, trusted: Vec<VerifyingKey>, state_dir: &Path) -> Result<Self> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
        let seq_path = state_dir.join("command-seq");
        let last_seq = match fs::read_to_string(&seq_path) {
            Ok(t) => t
                .trim()
                .parse()
                .with_context(|| format!("corrupt {} (fix or remove it)", seq_path.display()))?,
            Err(_) => 0,
        };
        Ok(CommandAuth {
            device_id: device_id.to_string(),
            trusted,
            seq_path,
            last_seq,
        })
    }

    /// Classify one command payload. A signed one that passes has its seq persisted
    /// before this returns, so it can never run twice.
    pub fn check(&mut self, payload: &[u8]) -> Checked {
        if payload.len() > MAX_COMMAND_BYTES {
            return Checked::Refused {
                command: None,
                why: format!(
                    "command of {} bytes, the limit is {MAX_COMMAND_BYTES}",
                    payload.len()
                ),
            };
        }
        let text = String::from_utf8_lossy(payload);
        if !text.trim_start().starts_with('{') {
            return Checked::Unsigned(text.trim().to_string());
        }
        let c: SignedCommand = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                return Checked::Refused {
                    command: None,
                    why: format!("not a signed command: {e}"),
                }
            }
        };
        match self.verify(&c) {
            Ok(()) => Checked::Signed(c.command.trim().to_string()),
            Err(why) => Checked::Refused {
                command: Some(c.command.trim().to_string()),
                why,
            },
        }
    }

    fn verify(&mut self, c: &SignedCommand) -> std::result::Result<(), String> {
        if c.device != self.device_id {
            return Err(format!(
                "signed for device {:?}, this is {:?}",
                c.device, self.device_id
            ));
        }
        let key = self
            .trusted
            .iter()
            .find(|k| key_id(k) == c.key_id)
            .ok_or_else(|| {
                format!(
                    "signed by key {} which this device does not trust",
                    c.key_id
                )
            })?;
        let sig: [u8; 64] = hex::decode(&c.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the signature is not 64 bytes of hex")?;
        key.verify_strict(
            &signed_bytes(&c.device, c.seq, &c.command),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| "the signature does not match the command".to_string())?;
        if c.seq <= self.last_seq {
            return Err(format!(
                "replayed: seq {} is not above the last accepted {}",
                c.seq, self.last_seq
            ));
        }
        self.persist(c.seq)
            .map_err(|e| format!("cannot persist the command seq: {e:#}"))?;
        self.last_seq = c.seq;
        Ok(())
    }

    fn persist(&self, seq: u64) -> Result<()> {
        crate::durable::write_atomic(&self.seq_path, format!("{seq}\n").as_bytes())
    }
}

/// At most `max` characters of an untrusted payload, on one line, for logs.
pub fn excerpt(payload: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(4 * max)]);
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if payload.len() > out.len() {
        out.push_str(&format!("... ({} bytes)", payload.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(dir: &Path, key: &SigningKey) -> CommandAuth {
        CommandAuth::open("dev", vec![key.verifying_key()], dir).unwrap()
    }

    #[test]
    fn signed_commands_pass_once_and_only_for_this_device_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::bundle::generate_key().unwrap();
        let other = crate::bundle::generate_key().unwrap();
        let mut a = auth(dir.path(), &key);
        assert_eq!(
            a.check(b" rollback\n"),
            Checked::Unsigned("rollback".into())
        );
        let ok = sign(&key, "dev", 5, "rollback").encode();
        assert_eq!(a.check(&ok), Checked::Signed("rollback".into()));
        // Replayed, also after a restart (the seq is persisted).
        assert!(matches!(a.check(&ok), Checked::Refused { why: w, .. } if w.contains("replayed")));
        let mut a = auth(dir.path(), &key);
        assert!(matches!(a.check(&ok), Checked::Refused { why: w, .. } if w.contains("replayed")));
        let cases = [
            (
                sign(&key, "other", 9, "rollback").encode(),
                "signed for device",
            ),
            (
                sign(&other, "dev", 9, "rollback").encode(),
                "does not trust",
            ),
            (
                {
                    let mut c = sign(&key, "dev", 9, "rollback");
                    c.command = "enroll 1".into();
                    c.encode()
                },
                "does not match",
            ),
            (b"{\"device\": 1}".to_vec(), "not a signed command"),
            (vec![b'{'; MAX_COMMAND_BYTES + 1], "limit"),
        ];
        for (payload, why) in cases {
            match a.check(&payload) {
                Checked::Refused { why: w, .. } => assert!(w.contains(why), "{w} should say {why}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            a.check(&sign(&key, "dev", 6, "enroll 2").encode()),
            Checked::Signed("enroll 2".into())
        );
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        let big = vec![b'x'; 900_000];
        let e = excerpt(&big, 200);
        assert!(e.len() < 260, "{}", e.len());
        assert!(e.ends_with("(900000 bytes)"));
        assert_eq!(excerpt(b"a\nb", 200), "a b");
    }
}
