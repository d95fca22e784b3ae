//! Moving a bundle over MQTT: chunks, each hashed, reassembled on disk.
//!
//! A sender publishes `Chunk`s (CBOR) to `maeday/<device_id>/bundle/chunk` or
//! `maeday/fleet/<group>/bundle/chunk`. The device stores each verified chunk under
//! `<state>/incoming/<bundle sha256>/`, so a transfer survives reconnects and restarts:
//! duplicates are ignored, order does not matter, and a sender that re-sends (what the
//! device's status lists as missing) completes it. The whole bundle is hashed at the end.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{reject, sha256_hex, Rejection};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Chunk {
    /// sha256 (hex) of the whole bundle file: names the transfer.
    pub bundle_sha256: String,
    pub total_bytes: u64,
    pub index: u32,
    pub count: u32,
    /// sha256 (hex) of `data`.
    pub sha256: String,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Chunk {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("a chunk always encodes");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Chunk, Rejection> {
        ciborium::from_reader(bytes)
            .map_err(|e| reject("corrupt", format!("not a bundle chunk: {e}")))
    }
}

/// Cut a bundle into chunks of at most `chunk_bytes`.
pub fn split(bundle: &[u8], chunk_bytes: usize) -> Vec<Chunk> {
    let total = sha256_hex(bundle);
    let parts: Vec<&[u8]> = bundle.chunks(chunk_bytes.max(1)).collect();
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, data)| Chunk {
            bundle_sha256: total.clone(),
            total_bytes: bundle.len() as u64,
            index: i as u32,
            count,
            sha256: sha256_hex(data),
            data: data.to_vec(),
        })
        .collect()
}

/// Progress of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still waiting for chunks.
    Receiving { received: u32, count: u32 },
    /// All chunks in and the whole hash checks: the bundle bytes.
    Complete(Vec<u8>),
}

/// Reassembles transfers under a folder, with size limits.
pub struct Assembler {
    dir: PathBuf,
    max_chunk_bytes: usize,
    max_bundle_bytes: u64,
}

fn valid_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Assembler {
    pub fn new(dir: &Path, max_chunk_bytes: usize, max_bundle_bytes: u64) -> Result<Assembler> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Assembler {
            dir: dir.to_path_buf(),
            max_chunk_bytes,
            max_bundle_bytes,
        })
    }

    fn transfer_dir(&self, sha: &str) -> PathBuf {
        self.dir.join(sha.to_ascii_lowercase())
    }

    /// Indexes not yet received (at most `limit`).
    pub fn missing(&self, sha: &str, count: u32, limit: usize) -> Vec<u32> {
        let have = self.have(sha);
        (0..count)
            .filter(|i| !have.contains(i))
            .take(limit)
            .collect()
    }

    fn have(&self, sha: &str) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        if let Ok(rd) = fs::read_dir(self.transfer_dir(sha)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(i) = name.strip_suffix(".chunk").and_then(|n| n.parse().ok()) {
                    out.insert(i);
                }
            }
        }
        out
    }

    /// Forget a transfer (after install or rejection).
    pub fn discard(&self, sha: &str) {
        let _ = fs::remove_dir_all(self.transfer_dir(sha));
    }

    /// Take one chunk. A bad chunk is rejected without harming the transfer.
    pub fn add(&self, c: &Chunk) -> Result<Progress, Rejection> {
        if !valid_hex64(&c.bundle_sha256) || !valid_hex64(&c.sha256) {
            return Err(reject("corrupt", "chunk hashes are not sha256 hex"));
        }
        if c.total_bytes > self.max_bundle_bytes {
            return Err(reject(
                "too-large",
                format!(
                    "bundle of {} bytes, the limit is {}",
                    c.total_bytes, self.max_bundle_bytes
                ),
            ));
        }
        if c.data.len() > self.max_chunk_bytes {
            return Err(reject(
                "too-large",
                format!(
                    "chunk of {} bytes, the limit is {}",
                    c.data.len(),
                    self.max_chunk_bytes
                ),
            ));
        }
        if c.count == 0 || c.index >= c.count || c.count as u64 > c.total_bytes.max(1) {
            return Err(reject(
                "corrupt",
                format!("chunk {} of {}", c.index, c.count),
            ));
        }
        if sha256_hex(&c.data) != c.sha256.to_ascii_lowercase() {
            return Err(reject(
                "corrupt",
                format!("chunk {} does not match its hash", c.index),
            ));
        }
        let io = |e: std::io::Error| reject("install-failed", format!("cannot store chunk: {e}"));
        let dir = self.transfer_dir(&c.bundle_sha256);
        fs::create_dir_all(&dir).map_err(io)?;
        // The transfer's shape is fixed by its first chunk; later ones must agree.
        let shape = dir.join("shape");
        let want = format!("{} {}", c.total_bytes, c.count);
        match fs::read_to_string(&shape) {
            Ok(s) if s != want => {
                return Err(reject(
                    "corrupt",
                    format!("chunk says {want}, the transfer is {s}"),
                ))
            }
            Ok(_) => {}
            Err(_) => fs::write(&shape, &want).map_err(io)?,
        }
        let path = dir.join(format!("{}.chunk", c.index));
        if !path.exists() {
            let tmp = dir.join(format!("{}.tmp", c.index));
            fs::write(&tmp, &c.data).map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
        }
        let have = self.have(&c.bundle_sha256);
        if (have.len() as u32) < c.count {
            return Ok(Progress::Receiving {
                received: have.len() as u32,
                count: c.count,
            });
        }
        let mut bytes = Vec::with_capacity(c.total_bytes as usize);
        for i in 0..c.count {
            let part = fs::read(dir.join(format!("{i}.chunk"))).map_err(io)?;
            bytes.extend_from_slice(&part);
        }
        if bytes.len() as u64 != c.total_bytes
            || sha256_hex(&bytes) != c.bundle_sha256.to_ascii_lowercase()
        {
            self.discard(&c.bundle_sha256);
            return Err(reject(
                "corrupt",
                "the reassembled bundle does not match its sha256 (transfer discarded)",
            ));
        }
        Ok(Progress::Complete(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_and_duplicate_chunks_reassemble_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let bundle: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks = split(&bundle, 1000);
        assert_eq!(chunks.len(), 10);
        let a = Assembler::new(dir.path(), 4096, 1 << 20).unwrap();
        let order = [9, 3, 3, 0, 1, 2, 9, 4, 5, 6, 7];
        for &i in &order {
            assert!(matches!(
                a.add(&chunks[i]).unwrap(),
                Progress::Receiving { .. }
            ));
        }
        assert_eq!(a.missing(&chunks[0].bundle_sha256, 10, 64), vec![8]);
        // A fresh assembler (a restart) resumes from disk.
        let a = Assembler::new(dir.path(), 4096, 1 << 20).unwrap();
        match a.add(&chunks[8]).unwrap() {
            Progress::Complete(b) => assert_eq!(b, bundle),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_chunks_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assembler::new(dir.path(), 100, 1000).unwrap();
        let mut c = split(&[1u8; 300], 100).remove(0);
        c.data[0] ^= 1;
        assert_eq!(a.add(&c).unwrap_err().reason, "corrupt");
        let big = split(&[1u8; 300], 300).remove(0);
        assert_eq!(a.add(&big).unwrap_err().reason, "too-large");
        let huge = split(&[1u8; 2000], 100).remove(0);
        assert_eq!(a.add(&huge).unwrap_err().reason, "too-large");
        assert_eq!(Chunk::decode(b"garbage").unwrap_err().reason, "corrupt");
    }
}
