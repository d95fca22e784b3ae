//! The store-and-forward spool: an on-disk FIFO of messages waiting for the broker.
//!
//! Backed by `redb` (an ACID, crash-safe embedded store: a kill -9 or power cut between
//! two commits loses nothing committed and never corrupts the file), one table keyed by an
//! increasing id. Bounded in payload bytes: when a push would pass the bound, the oldest
//! messages are dropped and counted. Survives restarts: ids continue after the last one.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

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
    db: Database,
    next_id: u64,
    len: u64,
    bytes: u64,
    max_bytes: u64,
    /// Messages dropped (oldest first) because the spool was full, since open.
    pub dropped: u64,
}

impl Spool {
    /// Open (or create) the spool in `dir`, keeping at most `max_bytes` of messages.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create spool folder {}", dir.display()))?;
        let path = dir.join("spool.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open spool {}", path.display()))?;
        let (mut next_id, mut len, mut bytes) = (0, 0, 0);
        {
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
        }
        Ok(Spool {
            db,
            next_id,
            len,
            bytes,
            max_bytes,
            dropped: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append messages in order (one durable commit), dropping the oldest if over the bound.
    pub fn push(&mut self, messages: &[Message]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for m in messages {
                let rec = m.encode();
                table.insert(self.next_id, rec.as_slice())?;
                self.next_id += 1;
                self.len += 1;
                self.bytes += rec.len() as u64;
            }
            while self.bytes > self.max_bytes && self.len > 1 {
                let Some((_, v)) = table.pop_first()? else {
                    break;
                };
                self.bytes -= v.value().len() as u64;
                self.len -= 1;
                self.dropped += 1;
            }
        }
        tx.commit().context("cannot commit to the spool")?;
        Ok(())
    }

    /// Up to `n` messages with ids above `after` (all from the oldest when `None`), in order.
    pub fn peek(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, Message)>> {
        let rx = self.db.begin_read()?;
        let table = rx.open_table(TABLE)?;
        let start = after.map_or(0, |a| a + 1);
        let mut out = Vec::new();
        for entry in table.range(start..)?.take(n) {
            let (k, v) = entry?;
            out.push((k.value(), Message::decode(v.value())?));
        }
        Ok(out)
    }

    /// Remove delivered messages (ids already gone, e.g. dropped when full, are ignored).
    pub fn remove(&mut self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TABLE)?;
            for id in ids {
                if let Some(v) = table.remove(id)? {
                    self.bytes -= v.value().len() as u64;
                    self.len -= 1;
                }
            }
        }
        tx.commit().context("cannot commit to the spool")?;
        Ok(())
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
            s.push(&[msg(1, 10), msg(2, 10)]).unwrap();
            s.push(&[msg(3, 10)]).unwrap();
            let first = s.peek(None, 1).unwrap();
            s.remove(&[first[0].0]).unwrap();
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.stored_len().unwrap(), 2);
        s.push(&[msg(4, 10)]).unwrap();
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
            s.push(&[msg(i, 1000)]).unwrap();
        }
        assert!(s.bytes() <= 5000, "{}", s.bytes());
        assert_eq!(s.len() + s.dropped, 10);
        assert!(s.dropped >= 5);
        let left = s.peek(None, 100).unwrap();
        assert_eq!(left.last().unwrap().1.topic, "t/9");
        assert_eq!(left[0].1.topic, format!("t/{}", s.dropped));
    }
}
