//! A V4L2 camera through the `v4l` crate: negotiate, stream, reopen when it disappears.
//!
//! Deliberately thin: pixel decoding lives in [`crate::convert`] (tested on real frame
//! buffers), this file only opens the device and moves buffers. Two driver traps handled:
//! only the `bytesused` prefix of a buffer is the frame (the rest is stale), and the stream
//! is started by the first `next()` (which queues every buffer) rather than by hand, which
//! can leave a single buffer queued and halve the frame rate.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use v4l::buffer::{Flags, Type};
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::{sleep_until, FrameSource, Next};
use crate::config::{PipelineConfig, SourceConfig};
use crate::convert::{self, PixelFormat};

struct Open {
    // The stream holds the device handle open; the device is kept for its lifetime.
    stream: Stream<'static>,
    _device: Device,
    format: PixelFormat,
    width: u32,
    height: u32,
}

pub struct V4l2Source {
    device: PathBuf,
    want: (PixelFormat, u32, u32, u32),
    buffers: u32,
    open: Option<Open>,
    granted: String,
    backoff: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    stop: Arc<AtomicBool>,
}

impl V4l2Source {
    pub fn new(
        cfg: &SourceConfig,
        pipeline: &PipelineConfig,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let SourceConfig::V4l2 {
            device,
            format,
            width,
            height,
            fps,
            buffers,
        } = cfg
        else {
            unreachable!("V4l2Source::new takes a v4l2 source config")
        };
        let code: [u8; 4] = format
            .as_bytes()
            .try_into()
            .map_err(|_| anyhow!("{format:?} is not a FourCC"))?;
        let mut src = V4l2Source {
            device: device.clone(),
            want: (PixelFormat::from_fourcc(code)?, *width, *height, *fps),
            buffers: *buffers,
            open: None,
            granted: "not opened yet".into(),
            min_backoff: Duration::from_secs_f64(pipeline.reconnect_min_s),
            max_backoff: Duration::from_secs_f64(pipeline.reconnect_max_s),
            backoff: Duration::from_secs_f64(pipeline.reconnect_min_s),
            stop,
        };
        // A camera missing at start is not fatal (it may be plugged in later), but say so.
        if let Err(e) = src.try_open() {
            log::warn!(
                "camera {}: {e:#}; retrying in the background",
                src.device.display()
            );
        }
        Ok(src)
    }

    fn try_open(&mut self) -> Result<()> {
        let (format, width, height, fps) = self.want;
        let dev = Device::with_path(&self.device)
            .with_context(|| format!("cannot open {}", self.device.display()))?;
        let mut fmt = dev.format().context("VIDIOC_G_FMT failed")?;
        fmt.width = width;
        fmt.height = height;
        fmt.fourcc = FourCC::new(&format.fourcc());
        let fmt = dev.set_format(&fmt).context("VIDIOC_S_FMT failed")?;
        let granted_format = PixelFormat::from_fourcc(fmt.fourcc.repr)
            .context("the driver granted a pixel format this runtime cannot read")?;
        let params = dev
            .set_params(&v4l::video::capture::Parameters::with_fps(fps))
            .context("VIDIOC_S_PARM failed")?;
        let granted_fps =
            params.interval.denominator as f64 / params.interval.numerator.max(1) as f64;
        ensure!(
            fmt.width > 0 && fmt.height > 0,
            "the driver granted an empty frame size"
        );
        self.granted = format!(
            "{} asked {}x{} {:?} @{fps} fps, granted {}x{} {} @{granted_fps:.1} fps",
            self.device.display(),
            width,
            height,
            String::from_utf8_lossy(&format.fourcc()),
            fmt.width,
            fmt.height,
            fmt.fourcc
        );
        log::info!("camera {}", self.granted);
        let stream = Stream::with_buffers(&dev, Type::VideoCapture, self.buffers)
            .context("cannot map capture buffers")?;
        self.open = Some(Open {
            stream,
            _device: dev,
            format: granted_format,
            width: fmt.width,
            height: fmt.height,
        });
        self.backoff = self.min_backoff;
        Ok(())
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Next {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Next::End;
            }
            let Some(open) = self.open.as_mut() else {
                if !sleep_until(Instant::now() + self.backoff, &self.stop) {
                    return Next::End;
                }
                if let Err(e) = self.try_open() {
                    self.backoff = (self.backoff * 2).min(self.max_backoff);
                    log::warn!(
                        "camera {}: {e:#}; next try in {:.1} s",
                        self.device.display(),
                        self.backoff.as_secs_f64()
                    );
                }
                continue;
            };
            match open.stream.next() {
                Ok((buf, meta)) => {
                    if meta.flags.contains(Flags::ERROR) {
                        return Next::Corrupt(anyhow!(
                            "driver flagged frame {} as corrupt",
                            meta.sequence
                        ));
                    }
                    let used = (meta.bytesused as usize).min(buf.len());
                    return match convert::to_rgb(open.format, open.width, open.height, &buf[..used])
                    {
                        Ok(img) => Next::Frame(img),
                        Err(e) => Next::Corrupt(e),
                    };
                }
                Err(e) => {
                    // ENODEV after a USB unplug, EIO on a wedged driver: reopen with backoff.
                    log::warn!(
                        "camera {} lost ({e}); reopening with backoff",
                        self.device.display()
                    );
                    self.open = None;
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("v4l2 {}", self.granted)
    }
}
