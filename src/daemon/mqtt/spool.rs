//! The store-and-forward spool: an on-disk FIFO of messages waiting for the broker.
//!
//! Backed by `redb` (an ACID, crash-safe embedded store: a kill -9 or power cut between
//! two commits loses nothing committed and never corrupts the file), one table keyed by an
//! increasing id. Bounded in payload bytes: when a push would pass the bound, the oldest
//! messages are dropped, counted and logged. Survives restarts: ids continue after the last one.
//!
//! A disk that fills up or fails must not stop the daemon, so no method fails: an IO error
//! is logged (at most once per [`LOG_INTERVAL`]) and handled here. redb refuses every
//! operation after an IO error until the database is reopened, so the spool reopens it
//! (redb recovers the last commit), drops the oldest messages to make room and tries again;
//! what still cannot be stored is left to the caller. A folder where the spool
//! cannot even be opened gets a spool in memory (bounded by [`MEMORY_MAX_BYTES`]); whatever
//! the file held stays there for the next start. Delivered messages that cannot be removed
//! (the removal is a write too) are remembered and skipped until a removal succeeds.
//! Records that cannot be decoded are dropped and counted when read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::daemon::throttle::{more, Throttle, LOG_INTERVAL};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

/// The bound of a spool that fell back to memory.
pub const MEMORY_MAX_BYTES: u64 = 32 << 20;

/// One message for the broker: a topic and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let t = self.topic.as_bytes();
        let mut out = Vec::with_capacity(2 + t.len() + self.payload.len());
        out.extend_from_slice(&(t.len() as u16).to_le_bytes());
        out.extend_from_slice(t);
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Message> {
        ensure!(bytes.len() >= 2, "spool record too short");
        let n = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        ensure!(bytes.len() >= 2 + n, "spool record topic truncated");
        Ok(Message {
            topic: String::from_utf8(bytes[2..2 + n].to_vec()).context("spool topic not UTF-8")?,
            payload: bytes[2 + n..].to_vec(),
        })
    }

    /// Bytes this message counts against the bound.
    pub fn size(&self) -> u64 {
        (2 + self.topic.len() + self.payload.len()) as u64
    }
}

pub struct Spool {
    dir: PathBuf,
    db: Database,
    /// False once the spool fell back to memory.
    on_disk: bool,
    next_id: u64,
    len: u64,
    bytes: u64,
    max_bytes: u64,
    /// Delivered, but their removal failed: skipped, removed again later.
    removed: BTreeSet<u64>,
    /// Messages dropped (oldest first) because the spool was full (its bound, or the disk),
    /// or unreadable, since open.
    pub dropped: u64,
    /// IO errors met, since open.
    pub errors: u64,
    full_log: Throttle,
    error_log: Throttle,
}

/// `(next_id, len, bytes)` of what the database holds.
fn scan(db: &Database) -> Result<(u64, u64, u64)> {
    let (mut next_id, mut len, mut bytes) = (0, 0, 0);
    let tx = db.begin_write()?;
    tx.open_table(TABLE)?; // create it on first use
    tx.commit()?;
    let rx = db.begin_read()?;
    let table = rx.open_table(TABLE)?;
    for entry in table.iter()? {
        let (k, v) = entry?;
        next_id = k.value() + 1;
        len += 1;
        bytes += v.value().len() as u64;
    }
    Ok((next_id, len, bytes))
}

fn open_file(dir: &Path) -> Result<Database> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create spool folder {}", dir.display()))?;
    let path = dir.join("spool.redb");
    Database::create(&path).with_context(|| format!("cannot open spool {}", path.display()))
}

fn open_memory() -> Result<Database> {
    Ok(Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?)
}

impl Spool {
    /// Open (or create) the spool in `dir`, keeping at most `max_bytes` of messages.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        let db = open_file(dir)?;
        let (next_id, len, bytes) =
            scan(&db).with_context(|| format!("cannot read spool {}", dir.display()))?;
        Ok(Spool::with(dir, db, true, (next_id, len, bytes), max_bytes))
    }

    /// [`Spool::open`], or, when the folder cannot hold a spool (a full or failing disk),
    /// a spool in memory: the daemon runs on, and says so.
    pub fn open_or_memory(dir: &Path, max_bytes: u64) -> Spool {
        match Spool::open(dir, max_bytes) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "{e:#}; spooling in memory (at most {} bytes, lost at exit) instead",
                    max_bytes.min(MEMORY_MAX_BYTES)
                );
                let mut s = Spool::memory(dir, max_bytes);
                s.errors = 1;
                s
            }
        }
    }

    fn memory(dir: &Path, max_bytes: u64) -> Spool {
        let db = open_memory().expect("an in-memory redb opens");
        let s = Spool::with(dir, db, false, (0, 0, 0), max_bytes.min(MEMORY_MAX_BYTES));
        let created = (|| -> Result<()> {
            let tx = s.db.begin_write()?;
            tx.open_table(TABLE)?;
            Ok(tx.commit()?)
        })();
        if let Err(e) = created {
            log::error!("in-memory spool: {e:#}");
        }
        s
    }

    fn with(dir: &Path, db: Database, on_disk: bool, counts: (u64, u64, u64), max: u64) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            db,
            on_disk,
            next_id: counts.0,
            len: counts.1,
            bytes: counts.2,
            max_bytes: max,
            removed: BTreeSet::new(),
            dropped: 0,
            errors: 0,
            full_log: Throttle::new(LOG_INTERVAL),
            error_log: Throttle::new(LOG_INTERVAL),
        }
    }

    /// Messages waiting (delivered ones whose removal failed do not count).
    pub fn len(&self) -> u64 {
        self.len - self.removed.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// False once the spool fell back to memory.
    pub fn on_disk(&self) -> bool {
        self.on_disk
    }

    /// An IO error: count it, log it (rate-limited).
    fn io_error(&mut self, what: &str, e: &anyhow::Error) {
        self.errors += 1;
        if let Some(n) = self.error_log.ready() {
            log::warn!("spool {}: {what}: {e:#}{}", self.dir.display(), more(n));
        }
    }

    /// After an IO error redb refuses everything until reopened: reopen the file (redb
    /// recovers its last commit, which our counters describe), or fall back to memory.
    fn reopen(&mut self) {
        if !self.on_disk {
            return;
        }
        // The old handle must be closed before the file is opened again.
        let placeholder = open_memory().expect("an in-memory redb opens");
        drop(std::mem::replace(&mut self.db, placeholder));
        match open_file(&self.dir) {
            Ok(db) => {
                // Check the counters against the file (cheap: its length and last key);
                // rescan only if a commit we took as failed did land.
                let same = (|| -> Result<bool> {
                    let rx = db.begin_read()?;
                    let t = rx.open_table(TABLE)?;
                    let last = t.last()?.map(|(k, _)| k.value());
                    Ok(t.len()? == self.len && last.is_none_or(|k| k < self.next_id))
                })();
                if !matches!(same, Ok(true)) {
                    match scan(&db) {
                        Ok((n, l, b)) => (self.next_id, self.len, self.bytes) = (n, l, b),
                        Err(e) => self.io_error("cannot read it after reopening", &e),
                    }
                    self.removed.clear();
                }
                self.db = db;
            }
            Err(e) => {
                log::error!(
                    "{e:#}; spooling in memory from now on (what the file holds stays for the next start)"
                );
                let (errors, dropped) = (self.errors + 1, self.dropped);
                *self = Spool::memory(&self.dir, self.max_bytes);
                (self.errors, self.dropped) = (errors, dropped);
            }
        }
    }

    /// Append messages in order (one durable commit), dropping the oldest if over the
    /// bound. On a full or failing disk: reopen, drop the oldest to make room and try again.
    /// False when the messages could not be stored: the caller keeps or counts them.
    pub fn push(&mut self, messages: &[Message]) -> bool {
        if messages.is_empty() {
            return true;
        }
        let Err(e) = self.try_push(messages) else {
            return true;
        };
        self.io_error(&format!("cannot store {} message(s)", messages.len()), &e);
        self.reopen();
        let need: u64 = messages.iter().map(|m| m.size()).sum();
        let retried = self.drop_oldest(need).and_then(|_| self.try_push(messages));
        if let Err(e) = retried {
            self.io_error("cannot store them after dropping the oldest either", &e);
            self.reopen();
            return false;
        }
        true
    }

    fn try_push(&mut self, messages: &[Message]) -> Result<()> {
        let (mut next_id, mut len, mut bytes) = (self.next_id, self.len, self.bytes);
        let (mut dropped, mut gone) = (0u64, Vec::new());
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for m in messages {
                let rec = m.encode();
                table.insert(next_id, rec.as_slice())?;
                next_id += 1;
                len += 1;
                bytes += rec.len() as u64;
            }
            while bytes > self.max_bytes && len > 1 {
                let Some((k, v)) = table.pop_first()? else {
                    break;
                };
                bytes -= v.value().len() as u64;
                len -= 1;
                if !self.removed.contains(&k.value()) {
                    dropped += 1;
                }
                gone.push(k.value());
            }
        }
        tx.commit().context("cannot commit to the spool")?;
        (self.next_id, self.len, self.bytes) = (next_id, len, bytes);
        for id in gone {
            self.removed.remove(&id);
        }
        if dropped > 0 {
            self.dropped += dropped;
            if let Some(n) = self.full_log.ready() {
                log::warn!(
                    "spool full ({} bytes, mqtt.spool.max_bytes): dropped the oldest {dropped} message(s), {} in all{}",
                    self.max_bytes,
                    self.dropped,
                    more(n)
                );
            }
        }
        Ok(())
    }

    /// Drop the oldest messages until `need` bytes are freed (at least one message).
    fn drop_oldest(&mut self, need: u64) -> Result<()> {
        let (mut len, mut bytes, mut freed, mut dropped) = (self.len, self.bytes, 0u64, 0u64);
        let mut gone = Vec::new();
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            while len > 0 && (freed < need || gone.is_empty()) {
                let Some((k, v)) = table.pop_first()? else {
                    break;
                };
                let n = v.value().len() as u64;
                (freed, bytes, len) = (freed + n, bytes - n, len - 1);
                if !self.removed.contains(&k.value()) {
                    dropped += 1;
                }
                gone.push(k.value());
            }
        }
        tx.commit().context("cannot commit to the spool")?;
        (self.len, self.bytes) = (len, bytes);
        for id in gone {
            self.removed.remove(&id);
        }
        self.dropped += dropped;
        if dropped > 0 {
            if let Some(n) = self.full_log.ready() {
                log::warn!(
                    "spool {}: disk full: dropped the oldest {dropped} message(s), {} in all{}",
                    self.dir.display(),
                    self.dropped,
                    more(n)
                );
            }
        }
        Ok(())
    }

    /// Up to `n` messages with ids above `after` (all from the oldest when `None`), in order.
    pub fn peek(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, Message)>> {
        let (out, mut bad) = self.read_range(after, n)?;
        match bad.pop() {
            Some((id, e)) => Err(e.context(format!("spool record {id} is unreadable"))),
            None => Ok(out),
        }
    }

    /// Up to `n` readable messages with ids above `after`, in order, and the unreadable
    /// records met on the way (id, why).
    #[allow(clippy::type_complexity)]
    fn read_range(
        &self,
        after: Option<u64>,
        n: usize,
    ) -> Result<(Vec<(u64, Message)>, Vec<(u64, anyhow::Error)>)> {
        let rx = self.db.begin_read()?;
        let table = rx.open_table(TABLE)?;
        let start = after.map_or(0, |a| a + 1);
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for entry in table.range(start..)? {
            if out.len() >= n {
                break;
            }
            let (k, v) = entry?;
            if self.removed.contains(&k.value()) {
                continue;
            }
            match Message::decode(v.value()) {
                Ok(m) => out.push((k.value(), m)),
                Err(e) => bad.push((k.value(), e)),
            }
        }
        Ok((out, bad))
    }

    /// [`Spool::peek`] for the sender: never fails. Unreadable records are dropped and
    /// counted; an IO error reopens the spool and gives nothing this time.
    pub fn next_batch(&mut self, after: Option<u64>, n: usize) -> Vec<(u64, Message)> {
        let read = self.read_range(after, n).map(|(out, bad)| {
            let bad: Vec<u64> = bad
                .into_iter()
                .map(|(id, e)| {
                    log::warn!("spool record {id} is unreadable ({e:#}): dropped");
                    id
                })
                .collect();
            (out, bad)
        });
        match read {
            Ok((out, bad)) => {
                if !bad.is_empty() {
                    self.dropped += bad.len() as u64;
                    self.remove(&bad);
                }
                out
            }
            Err(e) => {
                self.io_error("cannot read", &e);
                self.reopen();
                Vec::new()
            }
        }
    }

    /// Remove delivered messages (ids already gone, e.g. dropped when full, are ignored).
    /// When the disk refuses, they are skipped from now on and removed with the next call.
    pub fn remove(&mut self, ids: &[u64]) {
        if ids.is_empty() && self.removed.is_empty() {
            return;
        }
        self.removed.extend(ids.iter().copied());
        let done = (|| -> Result<(u64, u64)> {
            let (mut len, mut bytes) = (self.len, self.bytes);
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(TABLE)?;
                for id in &self.removed {
                    if let Some(v) = table.remove(id)? {
                        bytes -= v.value().len() as u64;
                        len -= 1;
                    }
                }
            }
            tx.commit().context("cannot commit to the spool")?;
            Ok((len, bytes))
        })();
        match done {
            Ok((len, bytes)) => {
                (self.len, self.bytes) = (len, bytes);
                self.removed.clear();
            }
            Err(e) => {
                self.io_error(
                    &format!("cannot remove {} delivered message(s)", self.removed.len()),
                    &e,
                );
                self.reopen();
            }
        }
    }

    /// Sanity check used by tests: the stored count matches the in-memory one.
    pub fn stored_len(&self) -> Result<u64> {
        let rx = self.db.begin_read()?;
        Ok(rx.open_table(TABLE)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: usize, size: usize) -> Message {
        Message {
            topic: format!("t/{i}"),
            payload: vec![i as u8; size],
        }
    }

    #[test]
    fn fifo_survives_reopen_and_continues_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            s.push(&[msg(1, 10), msg(2, 10)]);
            s.push(&[msg(3, 10)]);
            let first = s.peek(None, 1).unwrap();
            s.remove(&[first[0].0]);
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.stored_len().unwrap(), 2);
        s.push(&[msg(4, 10)]);
        let all = s.peek(None, 10).unwrap();
        let topics: Vec<&str> = all.iter().map(|(_, m)| m.topic.as_str()).collect();
        assert_eq!(topics, ["t/2", "t/3", "t/4"]);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        // Paging: after the first id.
        let rest = s.peek(Some(all[0].0), 10).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].1, msg(3, 10));
    }

    #[test]
    fn bound_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 5000).unwrap();
        for i in 0..10 {
            s.push(&[msg(i, 1000)]);
        }
        assert!(s.bytes() <= 5000, "{}", s.bytes());
        assert_eq!(s.len() + s.dropped, 10);
        assert!(s.dropped >= 5);
        let left = s.peek(None, 100).unwrap();
        assert_eq!(left.last().unwrap().1.topic, "t/9");
        assert_eq!(left[0].1.topic, format!("t/{}", s.dropped));
    }
}
