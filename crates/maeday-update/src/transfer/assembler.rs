//! The incoming area: chunks of partial transfers stored on disk until a bundle is complete.
//!
//! Each verified chunk goes under `<state>/incoming/<bundle sha256>-<total bytes>-<count>/`,
//! so a transfer survives reconnects and restarts: duplicates are ignored, order does not
//! matter, and a sender that re-sends (what the device's status lists as missing) completes
//! it. The whole bundle is hashed at the end.
//!
//! Chunks are not signed (only the complete bundle is), so anyone on the broker can send
//! them: the area is bounded ([`Limits`]: chunk and bundle size, stored bytes never above
//! the declared total, a number of transfers, an expiry, a total), a transfer's shape is
//! part of its key (a forged chunk cannot lock out the real bundle), and late chunks of a
//! finished bundle are dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::bundle::{reject, sha256_hex, Rejection};
use crate::transfer::chunk::{valid_hex64, Chunk};

/// Progress of one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Still waiting for chunks; up to 64 of the missing indexes.
    Receiving {
        received: u32,
        count: u32,
        missing: Vec<u32>,
    },
    /// All chunks in and the whole hash checks: the bundle bytes.
    Complete(Vec<u8>),
    /// A late chunk of a bundle already installed or rejected: dropped.
    Finished,
}

/// Bounds on the incoming area: every chunk is unauthenticated until the whole bundle's
/// signature checks, so nothing here may grow without limit.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_chunk_bytes: usize,
    pub max_bundle_bytes: u64,
    /// Partial transfers at once; a new one evicts the least recently updated.
    pub max_transfers: usize,
    /// A transfer that got no chunk for this long is deleted.
    pub expiry: Duration,
    /// All partial transfers together.
    pub max_incoming_bytes: u64,
}

impl Limits {
    /// Generous limits (tests, tools).
    pub fn new(max_chunk_bytes: usize, max_bundle_bytes: u64) -> Limits {
        Limits {
            max_chunk_bytes,
            max_bundle_bytes,
            max_transfers: 4,
            expiry: Duration::from_secs(3600),
            max_incoming_bytes: max_bundle_bytes.saturating_mul(2),
        }
    }
}

/// One partial transfer: a bundle sha256 with a shape (total bytes, chunk count). The same
/// sha with another shape is another transfer, so a forged first chunk cannot fix the shape
/// the real bundle must have.
#[derive(Debug)]
struct Transfer {
    sha: String,
    total: u64,
    count: u32,
    /// index -> stored bytes.
    have: BTreeMap<u32, u64>,
    bytes: u64,
    updated: SystemTime,
}

impl Transfer {
    fn missing(&self, limit: usize) -> Vec<u32> {
        (0..self.count)
            .filter(|i| !self.have.contains_key(i))
            .take(limit)
            .collect()
    }
}

/// Reassembles transfers under a folder (`<sha>-<total>-<count>/<index>.chunk`), within
/// [`Limits`].
pub struct Assembler {
    dir: PathBuf,
    limits: Limits,
    transfers: HashMap<String, Transfer>,
    /// Bundles installed or rejected lately, and when: their late chunks are dropped.
    finished: VecDeque<(String, Instant)>,
}

fn folder_name(sha: &str, total: u64, count: u32) -> String {
    format!("{}-{total}-{count}", sha.to_ascii_lowercase())
}

/// Remembered finished bundles, and for how long: late duplicates (QoS 1 redeliveries,
/// chunks queued behind the install, a sender's re-sends) come within seconds of the
/// verdict; the same bundle sent again later is a new transfer.
const FINISHED: usize = 64;
const LATE: Duration = Duration::from_secs(5);

impl Assembler {
    /// Open the incoming folder, taking over the partial transfers it holds (a restart
    /// resumes them) and deleting anything else.
    pub fn new(dir: &Path, limits: Limits) -> Result<Assembler> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut a = Assembler {
            dir: dir.to_path_buf(),
            limits,
            transfers: HashMap::new(),
            finished: VecDeque::new(),
        };
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match a.load(&name) {
                Some(t) => {
                    a.transfers.insert(name, t);
                }
                None => {
                    log::info!("incoming: removing {name} (not a transfer)");
                    let p = e.path();
                    let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
                }
            }
        }
        a.sweep(SystemTime::now());
        while a.transfers.len() > a.limits.max_transfers || a.bytes() > a.limits.max_incoming_bytes
        {
            a.evict_oldest(None);
        }
        Ok(a)
    }

    fn load(&self, name: &str) -> Option<Transfer> {
        let mut parts = name.split('-');
        let (sha, total, count) = (parts.next()?, parts.next()?, parts.next()?);
        let (total, count): (u64, u32) = (total.parse().ok()?, count.parse().ok()?);
        if parts.next().is_some() || !valid_hex64(sha) || name != folder_name(sha, total, count) {
            return None;
        }
        if count == 0 || total > self.limits.max_bundle_bytes {
            return None;
        }
        let path = self.dir.join(name);
        let mut t = Transfer {
            sha: sha.to_string(),
            total,
            count,
            have: BTreeMap::new(),
            bytes: 0,
            updated: fs::metadata(&path).and_then(|m| m.modified()).ok()?,
        };
        for e in fs::read_dir(&path).ok()?.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let index = f.strip_suffix(".chunk").and_then(|n| n.parse::<u32>().ok());
            match (index, e.metadata()) {
                (Some(i), Ok(m)) if i < count && m.is_file() => {
                    t.have.insert(i, m.len());
                    t.bytes += m.len();
                    t.updated = t.updated.max(m.modified().unwrap_or(t.updated));
                }
                _ => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        (t.bytes <= t.total).then_some(t)
    }

    /// Bytes held by all partial transfers.
    pub fn bytes(&self) -> u64 {
        self.transfers.values().map(|t| t.bytes).sum()
    }

    /// Partial transfers held.
    pub fn transfers(&self) -> usize {
        self.transfers.len()
    }

    fn remove(&mut self, name: &str) {
        if self.transfers.remove(name).is_some() {
            let _ = fs::remove_dir_all(self.dir.join(name));
        }
    }

    /// Delete transfers that got no chunk within the expiry.
    fn sweep(&mut self, now: SystemTime) {
        let expiry = self.limits.expiry;
        let old: Vec<String> = self
            .transfers
            .iter()
            .filter(|(_, t)| now.duration_since(t.updated).unwrap_or_default() > expiry)
            .map(|(n, _)| n.clone())
            .collect();
        for name in old {
            log::info!("incoming: transfer {name} expired (no chunk for {expiry:?})");
            self.remove(&name);
        }
    }

    /// Evict the least recently updated transfer other than `keep`; false if none.
    fn evict_oldest(&mut self, keep: Option<&str>) -> bool {
        let Some(name) = self
            .transfers
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != keep)
            .min_by_key(|(_, t)| t.updated)
            .map(|(n, _)| n.clone())
        else {
            return false;
        };
        log::warn!("incoming: evicting the partial transfer {name} to make room");
        self.remove(&name);
        true
    }

    /// Forget every transfer of this bundle (after install or rejection). With
    /// `remember`, chunks of it that arrive late are dropped instead of starting over.
    pub fn discard(&mut self, sha: &str, remember: bool) {
        let sha = sha.to_ascii_lowercase();
        let names: Vec<String> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.sha == sha)
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.remove(&n);
        }
        if remember {
            self.finished.retain(|(s, _)| *s != sha);
            if self.finished.len() >= FINISHED {
                self.finished.pop_front();
            }
            self.finished.push_back((sha, Instant::now()));
        }
    }

    /// Take one chunk. A bad chunk is rejected without harming the transfer.
    pub fn add(&mut self, c: &Chunk) -> Result<Progress, Rejection> {
        c.check(self.limits.max_chunk_bytes, self.limits.max_bundle_bytes)?;
        let sha = c.bundle_sha256.to_ascii_lowercase();
        self.finished.retain(|(_, at)| at.elapsed() < LATE);
        if self.finished.iter().any(|(s, _)| *s == sha) {
            return Ok(Progress::Finished);
        }
        let now = SystemTime::now();
        self.sweep(now);
        let name = self.open_transfer(&sha, c, now)?;
        self.store(&name, c, now)?;
        let t = &self.transfers[&name];
        if (t.have.len() as u32) < t.count {
            return Ok(Progress::Receiving {
                received: t.have.len() as u32,
                count: t.count,
                missing: t.missing(64),
            });
        }
        self.reassemble(&name)
    }

    /// The transfer `c` belongs to (its folder name), created (evicting the least recently
    /// updated ones past the limit) if it is the first chunk of it.
    fn open_transfer(
        &mut self,
        sha: &str,
        c: &Chunk,
        now: SystemTime,
    ) -> Result<String, Rejection> {
        let name = folder_name(sha, c.total_bytes, c.count);
        if !self.transfers.contains_key(&name) {
            while self.transfers.len() >= self.limits.max_transfers {
                self.evict_oldest(None);
            }
            fs::create_dir_all(self.dir.join(&name)).map_err(store_failed)?;
            self.transfers.insert(
                name.clone(),
                Transfer {
                    sha: sha.to_string(),
                    total: c.total_bytes,
                    count: c.count,
                    have: BTreeMap::new(),
                    bytes: 0,
                    updated: now,
                },
            );
        }
        Ok(name)
    }

    /// Write `c` into its transfer's folder, within the transfer's declared size and the
    /// area's total (evicting other transfers to make room).
    fn store(&mut self, name: &str, c: &Chunk, now: SystemTime) -> Result<(), Rejection> {
        let dir = self.dir.join(name);
        let path = dir.join(format!("{}.chunk", c.index));
        let t = &self.transfers[name];
        let old = t.have.get(&c.index).copied();
        // A copy already here: the same bytes are a duplicate; other bytes replace it (one
        // of the two is forged; the whole-bundle hash decides, and a sender re-sends).
        let duplicate = old.is_some_and(|n| n == c.data.len() as u64)
            && fs::read(&path).is_ok_and(|d| d == c.data);
        let after = t.bytes - old.unwrap_or(0) + c.data.len() as u64;
        if !duplicate {
            if after > t.total {
                return Err(reject(
                    "too-large",
                    format!(
                        "chunk {} takes the transfer to {after} bytes, above its declared {}",
                        c.index, t.total
                    ),
                ));
            }
            let grow = c.data.len() as u64 - old.unwrap_or(0).min(c.data.len() as u64);
            while self.bytes() + grow > self.limits.max_incoming_bytes {
                if !self.evict_oldest(Some(name)) {
                    return Err(reject(
                        "too-large",
                        "the incoming area is full (bundles.max_incoming_bytes)",
                    ));
                }
            }
            // Not fsynced: a chunk torn by a power cut fails the whole-bundle hash, and the
            // transfer is sent again.
            let tmp = dir.join(format!("{}.tmp", c.index));
            fs::write(&tmp, &c.data).map_err(store_failed)?;
            fs::rename(&tmp, &path).map_err(store_failed)?;
        }
        let t = self.transfers.get_mut(name).expect("present");
        t.have.insert(c.index, c.data.len() as u64);
        t.bytes = after;
        t.updated = now;
        Ok(())
    }

    /// Read a transfer whose chunks are all in, and check the whole bundle's hash (a
    /// mismatch discards the transfer).
    fn reassemble(&mut self, name: &str) -> Result<Progress, Rejection> {
        let t = &self.transfers[name];
        let dir = self.dir.join(name);
        let mut bytes = Vec::with_capacity(t.total as usize);
        for i in 0..t.count {
            let part = fs::read(dir.join(format!("{i}.chunk"))).map_err(store_failed)?;
            bytes.extend_from_slice(&part);
        }
        if bytes.len() as u64 != t.total || sha256_hex(&bytes) != t.sha {
            self.remove(name);
            return Err(reject(
                "corrupt",
                "the reassembled bundle does not match its sha256 (transfer discarded)",
            ));
        }
        Ok(Progress::Complete(bytes))
    }
}

fn store_failed(e: std::io::Error) -> Rejection {
    reject("install-failed", format!("cannot store chunk: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::chunk::split;

    fn folders(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn out_of_order_and_duplicate_chunks_reassemble_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let bundle: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let chunks = split(&bundle, 1000);
        assert_eq!(chunks.len(), 10);
        let mut a = Assembler::new(dir.path(), Limits::new(4096, 1 << 20)).unwrap();
        let order = [9, 3, 3, 0, 1, 2, 9, 4, 5, 6, 7];
        let mut last = None;
        for &i in &order {
            last = Some(a.add(&chunks[i]).unwrap());
        }
        match last.unwrap() {
            Progress::Receiving { missing, .. } => assert_eq!(missing, vec![8]),
            other => panic!("{other:?}"),
        }
        // A fresh assembler (a restart) resumes from disk.
        let mut a = Assembler::new(dir.path(), Limits::new(4096, 1 << 20)).unwrap();
        match a.add(&chunks[8]).unwrap() {
            Progress::Complete(b) => assert_eq!(b, bundle),
            other => panic!("{other:?}"),
        }
        // A crash before the transfer was discarded: any chunk sent again completes it.
        let mut a = Assembler::new(dir.path(), Limits::new(4096, 1 << 20)).unwrap();
        match a.add(&chunks[0]).unwrap() {
            Progress::Complete(b) => assert_eq!(b, bundle),
            other => panic!("{other:?}"),
        }
        // Installed: late duplicates are dropped and leave nothing behind.
        a.discard(&chunks[0].bundle_sha256, true);
        assert_eq!(a.add(&chunks[3]).unwrap(), Progress::Finished);
        assert_eq!(folders(dir.path()), 0);
    }

    #[test]
    fn bad_chunks_are_rejected_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path(), Limits::new(100, 1000)).unwrap();
        let mut c = split(&[1u8; 300], 100).remove(0);
        c.data[0] ^= 1;
        assert_eq!(a.add(&c).unwrap_err().reason, "corrupt");
        let big = split(&[1u8; 300], 300).remove(0);
        assert_eq!(a.add(&big).unwrap_err().reason, "too-large");
        let huge = split(&[1u8; 2000], 100).remove(0);
        assert_eq!(a.add(&huge).unwrap_err().reason, "too-large");
        assert_eq!(Chunk::decode(b"garbage").unwrap_err().reason, "corrupt");
    }

    /// A chunk with arbitrary data for a claimed transfer (what anyone on the broker can send).
    fn forged(sha: &str, total: u64, index: u32, count: u32, data: Vec<u8>) -> Chunk {
        Chunk {
            bundle_sha256: sha.to_string(),
            total_bytes: total,
            index,
            count,
            sha256: sha256_hex(&data),
            data,
        }
    }

    #[test]
    fn a_transfer_never_stores_more_than_it_declared() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path(), Limits::new(1000, 1 << 20)).unwrap();
        let sha = "ab".repeat(32);
        let mut refused = 0;
        for i in 0..6 {
            if a.add(&forged(&sha, 1000, i, 6, vec![i as u8; 1000]))
                .is_err()
            {
                refused += 1;
            }
        }
        assert_eq!(refused, 5);
        assert!(a.bytes() <= 1000, "{}", a.bytes());
    }

    #[test]
    fn transfers_are_capped_evicted_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_transfers: 3,
            max_incoming_bytes: 2500,
            ..Limits::new(1000, 2000)
        };
        let mut a = Assembler::new(dir.path(), limits.clone()).unwrap();
        for i in 0..20u8 {
            let sha = format!("{:02x}", i).repeat(32);
            a.add(&forged(&sha, 2000, 0, 2, vec![i; 1000])).unwrap();
            assert!(a.transfers() <= 3 && a.bytes() <= 2500);
        }
        assert!(folders(dir.path()) <= 3);
        // The newest ones survive; a restart with a short expiry deletes them all.
        std::thread::sleep(Duration::from_millis(1100));
        let a = Assembler::new(
            dir.path(),
            Limits {
                expiry: Duration::from_secs(1),
                ..limits
            },
        )
        .unwrap();
        assert_eq!((a.transfers(), folders(dir.path())), (0, 0));
    }

    #[test]
    fn a_forged_first_chunk_does_not_lock_out_the_real_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Assembler::new(dir.path(), Limits::new(1000, 1 << 20)).unwrap();
        let bundle: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        let chunks = split(&bundle, 1000);
        let sha = &chunks[0].bundle_sha256;
        // Another shape under the real sha, and other bytes at a real index.
        a.add(&forged(sha, 5000, 0, 5, vec![9; 1000])).unwrap();
        a.add(&forged(sha, 3000, 1, 3, vec![7; 1000])).unwrap();
        let mut done = None;
        for c in &chunks {
            done = Some(a.add(c).unwrap());
        }
        assert_eq!(done.unwrap(), Progress::Complete(bundle));
    }
}
