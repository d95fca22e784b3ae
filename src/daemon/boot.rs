//! The boot counter: which start of the daemon a result comes from.
//!
//! `seq` restarts at 1 on every start while the spool replays the previous run's results,
//! so `(camera, seq)` alone repeats across restarts; `(camera, boot, seq)` never does. The
//! counter is kept in a file `boot` in every folder whose contents outlive the process (the
//! spool, the output folder), so whichever of them survives, the next start counts past it.
//! It is written before the first result: to a temporary file, fsynced, renamed over the old
//! one, and the folder fsynced, so a power cut leaves the old or the new number, never none.
//! On a full disk the rename's new file cannot be written; the fixed-width number is then
//! overwritten in place (the file keeps its blocks). If no folder can record it, the boot
//! number falls back to the Unix time in seconds, larger than any counted boot on a device
//! whose clock is set, and that is logged: a crash loop on a broken disk still never reuses
//! an identity.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// The counter's file name inside each folder.
pub const FILE: &str = "boot";

/// This start's boot number: one more than the highest recorded in `dirs`, recorded in each.
/// Never fails: a folder that cannot be read or written is logged and skipped.
pub fn next(dirs: &[&Path]) -> u64 {
    let stored = dirs.iter().map(|d| read(d)).max().unwrap_or(0);
    let mut boot = stored.saturating_add(1);
    if dirs.is_empty() {
        return boot;
    }
    let mut recorded = false;
    for dir in dirs {
        match write(dir, boot) {
            Ok(()) => recorded = true,
            Err(e) => log::error!("boot counter: {e:#}"),
        }
    }
    if !recorded {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        boot = boot.max(now);
        log::error!(
            "boot counter: no folder could record it; this start uses boot {boot} (the Unix time)"
        );
    }
    boot
}

/// The number recorded in `dir` (0 when there is none or it is unreadable).
fn read(dir: &Path) -> u64 {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            log::warn!(
                "boot counter {} is not a number ({:?}): ignored",
                path.display(),
                text.chars().take(32).collect::<String>()
            );
            0
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            log::warn!("boot counter {}: {e}: ignored", path.display());
            0
        }
    }
}

/// The record: fixed width, so that overwriting it in place needs no new blocks.
fn record(boot: u64) -> String {
    format!("{boot:020}\n")
}

fn write(dir: &Path, boot: u64) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    let Err(e) = write_atomic(dir, &tmp, &path, boot) else {
        return Ok(());
    };
    let _ = fs::remove_file(&tmp);
    let e = anyhow::Error::new(e).context(format!("cannot write {}", path.display()));
    // The disk may be full: the existing file's blocks can still be overwritten.
    match write_in_place(&path, boot) {
        Ok(()) => {
            log::warn!("{e:#}; overwrote it in place instead");
            Ok(())
        }
        Err(e2) => Err(e.context(format!("nor in place: {e2}"))),
    }
}

/// A temporary file, fsynced, renamed over the record, the folder fsynced.
fn write_atomic(dir: &Path, tmp: &Path, path: &Path, boot: u64) -> std::io::Result<()> {
    let mut f = File::create(tmp)?;
    f.write_all(record(boot).as_bytes())?;
    f.sync_all()?;
    fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

fn write_in_place(path: &Path, boot: u64) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(record(boot).as_bytes())?;
    f.set_len(record(boot).len() as u64)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_the_highest_folder_and_records_in_all() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_eq!(next(&[a.path(), b.path()]), 1);
        assert_eq!(next(&[a.path()]), 2);
        // b still says 1, a says 2: the next start counts past both.
        assert_eq!(next(&[b.path(), a.path()]), 3);
        assert_eq!(read(b.path()), 3);
        assert_eq!(fs::read_to_string(a.path().join(FILE)).unwrap(), record(3));
        assert!(!a.path().join("boot.tmp").exists());
    }

    #[test]
    fn garbage_is_ignored_and_overwritten() {
        let a = tempfile::tempdir().unwrap();
        fs::write(a.path().join(FILE), "not a number").unwrap();
        assert_eq!(next(&[a.path()]), 1);
        assert_eq!(read(a.path()), 1);
    }

    #[test]
    fn an_unwritable_folder_falls_back_to_the_clock() {
        let a = tempfile::tempdir().unwrap();
        let file = a.path().join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let boot = next(&[&file]);
        assert!(boot > 1_600_000_000, "{boot}");
    }
}
