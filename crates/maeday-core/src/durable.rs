//! Writing files so that a power cut leaves the old version or the new one, never half of
//! either, and the hashes that name what was written.
//!
//! Every writer of durable state (model manifests, banks, bundle slots, the boot counter,
//! the command sequence) goes through here, so "fsync the file, rename, fsync the folder"
//! is written once.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Create (or truncate) `path`, write `data` and fsync it. Not atomic: use it for files in
/// a folder that is itself renamed into place, or [`write_atomic`] otherwise.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Replace `path` with `data` atomically: a fsynced temporary sibling renamed over it, then
/// the folder fsynced so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path);
    write_synced(&tmp, data)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// `name.ext` -> `name.ext.tmp` in the same folder (a rename never crosses filesystems).
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Fsync a folder, so the entries created or renamed in it are durable. Best effort: some
/// filesystems refuse to open a folder for syncing, and then there is nothing more to do.
pub fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Copy a folder tree, every file fsynced, every folder synced after its entries.
pub fn copy_dir_synced(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir_synced(&entry.path(), &target)?;
        } else {
            copy_synced(&entry.path(), &target)?;
        }
    }
    sync_dir(to);
    Ok(())
}

/// Copy one file and fsync the copy (not atomic: the folder holding it is renamed into
/// place, or synced, by the caller).
pub fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    File::open(to)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", to.display()))
}

/// Lower-case hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed (graphs are hundreds of megabytes).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!temporary_sibling(&p).exists());
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(b"two"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
