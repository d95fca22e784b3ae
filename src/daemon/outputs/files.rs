//! The folder output (`files.dir`): `results.jsonl` and the mask (and heatmap) PNGs.
//!
//! A full disk never stops the daemon: a line or PNG the disk refuses is dropped and
//! counted, and a line is appended whole or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::daemon::outputs::output::{Output, Rendered};
use crate::daemon::payload::ResultPayload;
use crate::daemon::stats::{FileStats, MetricsPayload};
use crate::daemon::throttle::{more, Throttle};
use anyhow::{Context, Result};

/// A folder sink: `results.jsonl` (one JSON result per line),
/// `masks/<camera>-<boot>-<seq>.png` (the boot keeps a restart from overwriting the masks
/// of the run before) and, with `output.heatmap`, the same frames' heatmap overlays in
/// `heatmaps/` (only beside a mask: a picture per frame would fill the disk).
pub struct FileSink {
    dir: PathBuf,
    /// `results.jsonl`, opened on first use, and again after it could not be.
    lines: Option<File>,
    stats: FileStats,
    log: Throttle,
}

impl FileSink {
    /// Never fails: a folder that cannot be created now (a full disk) is tried again with
    /// every result.
    pub fn new(dir: PathBuf) -> FileSink {
        let mut f = FileSink {
            dir,
            lines: None,
            stats: FileStats::default(),
            log: Throttle::default(),
        };
        if let Err(e) = f.open() {
            log::error!("files.dir: {e:#}; trying again with every result");
        }
        f
    }

    fn open(&mut self) -> Result<&mut File> {
        if self.lines.is_none() {
            fs::create_dir_all(self.dir.join("masks"))
                .and_then(|()| fs::create_dir_all(self.dir.join("heatmaps")))
                .with_context(|| format!("cannot create output folder {}", self.dir.display()))?;
            let path = self.dir.join("results.jsonl");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            self.lines = Some(file);
        }
        Ok(self.lines.as_mut().expect("opened above"))
    }

    /// Append one line whole or not at all: a partial write is cut off again, so the file
    /// stays one JSON document per line when the disk fills up.
    fn append(&mut self, line: &[u8]) -> Result<()> {
        let path = self.dir.join("results.jsonl");
        let f = self.open()?;
        let len = f.metadata().map(|m| m.len()).ok();
        if let Err(e) = f.write_all(line) {
            if let Some(len) = len {
                let _ = f.set_len(len);
            }
            return Err(e).with_context(|| format!("cannot append to {}", path.display()));
        }
        Ok(())
    }

    fn write(&mut self, p: &ResultPayload, mask: Option<&[u8]>, heatmap: Option<&[u8]>) {
        let mut line = match serde_json::to_vec(p) {
            Ok(l) => l,
            Err(e) => return self.failed(&anyhow::Error::new(e)),
        };
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => self.stats.results += 1,
            Err(e) => self.failed(&e),
        }
        if let Some(png) = mask {
            if self.write_picture("masks", p, png) {
                self.stats.masks += 1;
            }
            if let Some(png) = heatmap {
                if self.write_picture("heatmaps", p, png) {
                    self.stats.heatmaps += 1;
                }
            }
        }
    }

    /// `<folder>/<camera>-<boot>-<seq>.png`, whole or not at all; false (counted) if not.
    fn write_picture(&mut self, folder: &str, p: &ResultPayload, png: &[u8]) -> bool {
        let path = self
            .dir
            .join(folder)
            .join(format!("{}-{}-{}.png", p.camera, p.boot, p.seq));
        match write_whole(&path, png) {
            Ok(()) => true,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, e: &anyhow::Error) {
        self.stats.failed += 1;
        if let Some(n) = self.log.ready() {
            log::warn!(
                "files.dir: {e:#}: dropped ({} dropped in all){}",
                self.stats.failed,
                more(n)
            );
        }
    }
}

/// Write a file, or leave none: a PNG cut short by a full disk is removed.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| {
        let _ = fs::remove_file(path);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

impl FileSink {
    pub fn stats(&self) -> FileStats {
        self.stats
    }
}

impl Output for FileSink {
    fn result(&mut self, r: &Rendered) -> Result<()> {
        self.write(&r.payload, r.mask_png.as_deref(), r.heatmap_png.as_deref());
        Ok(())
    }

    /// The folder keeps results only.
    fn metrics(&mut self, _: &MetricsPayload) -> Result<()> {
        Ok(())
    }
}
