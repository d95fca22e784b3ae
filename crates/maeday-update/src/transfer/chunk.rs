//! The chunk format: one piece of a bundle on the wire (CBOR), hashed on its own and naming
//! the whole bundle's hash and shape. Pure: no disk, no state.

use serde::{Deserialize, Serialize};

use crate::bundle::{reject, sha256_hex, Rejection};

/// One piece of a bundle, as published on a bundle chunk topic.
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

    /// Check what a chunk says about itself, before anything is stored: sha256 hex hashes,
    /// sizes within the limits, an index inside a count that fits the declared total, and
    /// data matching its own hash.
    pub fn check(&self, max_chunk_bytes: usize, max_bundle_bytes: u64) -> Result<(), Rejection> {
        if !valid_hex64(&self.bundle_sha256) || !valid_hex64(&self.sha256) {
            return Err(reject("corrupt", "chunk hashes are not sha256 hex"));
        }
        if self.total_bytes > max_bundle_bytes {
            return Err(reject(
                "too-large",
                format!(
                    "bundle of {} bytes, the limit is {max_bundle_bytes}",
                    self.total_bytes
                ),
            ));
        }
        if self.data.len() > max_chunk_bytes {
            return Err(reject(
                "too-large",
                format!(
                    "chunk of {} bytes, the limit is {max_chunk_bytes}",
                    self.data.len()
                ),
            ));
        }
        if self.count == 0
            || self.index >= self.count
            || self.count as u64 > self.total_bytes.max(1)
            || self.data.len() as u64 > self.total_bytes
        {
            return Err(reject(
                "corrupt",
                format!(
                    "chunk {} of {} with {} bytes of a {}-byte bundle",
                    self.index,
                    self.count,
                    self.data.len(),
                    self.total_bytes
                ),
            ));
        }
        if sha256_hex(&self.data) != self.sha256.to_ascii_lowercase() {
            return Err(reject(
                "corrupt",
                format!("chunk {} does not match its hash", self.index),
            ));
        }
        Ok(())
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

/// A sha256 in hex (either case).
pub fn valid_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
