//! A V4L2 camera: negotiate, stream through mmap'ed buffers, reopen when it disappears.
//!
//! Deliberately thin: pixel decoding lives in [`crate::daemon::source::convert`] (tested on real frame
//! buffers), this file only opens the device and moves buffers; the kernel structs and ioctl
//! numbers are in [`super::v4l2_abi`] (no bindgen, so no libclang at build time). Two driver
//! traps handled: only the `bytesused` prefix of a buffer is the frame (the rest is stale),
//! and every buffer is queued before `STREAMON`, so the driver never runs dry on one buffer
//! and halves the frame rate. Waiting uses `poll` with a short timeout, so a stop request
//! ends a wait on a camera that delivers nothing.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::v4l2_abi as abi;
use super::{sleep_until, FrameSource, Next};
use crate::config::{PipelineConfig, SourceConfig};
use crate::daemon::source::convert::{self, PixelFormat};

/// `ioctl` with EINTR retried; the error names the request.
///
/// # Safety
/// `arg` must point to the struct the request `req` reads and writes.
unsafe fn ioctl<T>(fd: &OwnedFd, req: u64, name: &str, arg: *mut T) -> Result<()> {
    loop {
        // SAFETY: the caller guarantees `arg` matches `req`; `fd` is open.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
        if rc != -1 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(anyhow::Error::new(err).context(format!("{name} failed")));
        }
    }
}

/// One driver buffer mapped into this process.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// An open, streaming device. Dropping it stops the stream, unmaps the buffers and closes
/// the device, in that order.
struct Open {
    buffers: Vec<Mapped>,
    fd: OwnedFd,
    format: PixelFormat,
    width: u32,
    height: u32,
}

// SAFETY: the mapped buffers are only touched by the thread that owns the source.
unsafe impl Send for Open {}

impl Drop for Open {
    fn drop(&mut self) {
        let mut kind = abi::BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: STREAMOFF takes a pointer to the buffer type.
        let _ = unsafe {
            ioctl(
                &self.fd,
                abi::VIDIOC_STREAMOFF,
                "VIDIOC_STREAMOFF",
                &mut kind,
            )
        };
        self.buffers.clear();
    }
}

/// What one wait for a frame gave.
enum Dequeued {
    Frame(Next),
    /// Nothing within the poll timeout (check the stop flag and wait again).
    Nothing,
}

impl Open {
    fn start(
        path: &Path,
        want: (PixelFormat, u32, u32, u32),
        count: u32,
        max_pixels: u64,
    ) -> Result<(Self, String)> {
        let (format, width, height, fps) = want;
        let fd = open_device(path)?;
        let card = check_capabilities(&fd, path)?;
        let (pix, granted_format) = set_format(&fd, format, width, height, max_pixels)?;
        let granted_fps = set_frame_rate(&fd, fps, path);
        let granted = format!(
            "{} ({card}) asked {width}x{height} {:?} @{fps} fps, granted {}x{} {} @{granted_fps} fps",
            path.display(),
            String::from_utf8_lossy(&format.fourcc()),
            pix.width,
            pix.height,
            String::from_utf8_lossy(&pix.pixelformat.to_le_bytes()),
        );
        let buffers = map_buffers(&fd, count)?;
        let queued = buffers.len() as u32;
        let open = Open {
            buffers,
            fd,
            format: granted_format,
            width: pix.width,
            height: pix.height,
        };
        for index in 0..queued {
            open.queue(index)?;
        }
        let mut kind = abi::BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: STREAMON takes a pointer to the buffer type.
        unsafe { ioctl(&open.fd, abi::VIDIOC_STREAMON, "VIDIOC_STREAMON", &mut kind)? };
        Ok((open, granted))
    }

    fn queue(&self, index: u32) -> Result<()> {
        let mut buf = abi::Buffer {
            index,
            type_: abi::BUF_TYPE_VIDEO_CAPTURE,
            memory: abi::MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: QBUF reads a v4l2_buffer.
        unsafe { ioctl(&self.fd, abi::VIDIOC_QBUF, "VIDIOC_QBUF", &mut buf) }
    }

    /// Wait up to `timeout` for a filled buffer, decode it, give the buffer back.
    fn dequeue(&self, timeout: Duration) -> Result<Dequeued> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(Dequeued::Nothing);
            }
            return Err(anyhow::Error::new(err).context("poll failed"));
        }
        if rc == 0 {
            return Ok(Dequeued::Nothing);
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            bail!("the device reported an error (unplugged?)");
        }
        let mut buf = abi::Buffer {
            type_: abi::BUF_TYPE_VIDEO_CAPTURE,
            memory: abi::MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: DQBUF fills a v4l2_buffer.
        if let Err(e) = unsafe { ioctl(&self.fd, abi::VIDIOC_DQBUF, "VIDIOC_DQBUF", &mut buf) } {
            let again = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::WouldBlock);
            return if again { Ok(Dequeued::Nothing) } else { Err(e) };
        }
        let Some(mapped) = self.buffers.get(buf.index as usize) else {
            bail!(
                "the driver returned buffer {} of {}",
                buf.index,
                self.buffers.len()
            );
        };
        let next = if buf.flags & abi::BUF_FLAG_ERROR != 0 {
            Next::Corrupt(anyhow!("driver flagged frame {} as corrupt", buf.sequence))
        } else {
            let used = (buf.bytesused as usize).min(mapped.len);
            // SAFETY: the driver filled this mapping, and does not touch it again until it
            // is queued below, after the frame is decoded into our own image.
            let data = unsafe { std::slice::from_raw_parts(mapped.ptr as *const u8, used) };
            match convert::to_rgb(self.format, self.width, self.height, data) {
                Ok(img) => Next::Frame(img),
                Err(e) => Next::Corrupt(e),
            }
        };
        self.queue(buf.index)?;
        Ok(Dequeued::Frame(next))
    }
}

pub struct V4l2Source {
    device: PathBuf,
    want: (PixelFormat, u32, u32, u32),
    buffers: u32,
    max_pixels: u64,
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
            max_pixels: pipeline.max_frame_pixels,
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
        self.open = None; // close the old stream before the device is opened again
        let (open, granted) = Open::start(&self.device, self.want, self.buffers, self.max_pixels)?;
        log::info!("camera {granted}");
        self.granted = granted;
        self.open = Some(open);
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
            let Some(open) = self.open.as_ref() else {
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
            match open.dequeue(Duration::from_millis(200)) {
                Ok(Dequeued::Frame(next)) => return next,
                Ok(Dequeued::Nothing) => continue,
                Err(e) => {
                    // ENODEV after a USB unplug, EIO on a wedged driver: reopen with backoff.
                    log::warn!(
                        "camera {} lost ({e:#}); reopening with backoff",
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

/// Open the device node (non-blocking: frames are waited for with poll).
fn open_device(path: &Path) -> Result<OwnedFd> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| anyhow!("{} contains a NUL byte", path.display()))?;
    // SAFETY: a valid C string; the result is checked.
    let raw = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error())
            .context(format!("cannot open {}", path.display())));
    }
    // SAFETY: `raw` is a freshly opened descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(fd)
}

/// Check that the device captures video by streaming; its card name, for logs.
fn check_capabilities(fd: &OwnedFd, path: &Path) -> Result<String> {
    let mut cap = abi::Capability::default();
    // SAFETY: QUERYCAP fills a v4l2_capability.
    unsafe {
        ioctl(
            fd,
            abi::VIDIOC_QUERYCAP,
            "VIDIOC_QUERYCAP (not a V4L2 device?)",
            &mut cap,
        )?
    };
    let caps = if cap.capabilities & abi::CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    let card = String::from_utf8_lossy(&cap.card);
    let card = card.trim_end_matches('\0').to_string();
    ensure!(
        caps & abi::CAP_VIDEO_CAPTURE != 0,
        "{} ({card}) is not a video capture device",
        path.display()
    );
    ensure!(
        caps & abi::CAP_STREAMING != 0,
        "{} ({card}) cannot stream (no V4L2_CAP_STREAMING)",
        path.display()
    );
    Ok(card)
}

/// Ask for a pixel format and size; what the driver granted, refused when this runtime
/// cannot read it or it is over `max_pixels`.
fn set_format(
    fd: &OwnedFd,
    format: PixelFormat,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<(abi::PixFormat, PixelFormat)> {
    let mut fmt = abi::Format {
        type_: abi::BUF_TYPE_VIDEO_CAPTURE,
        ..Default::default()
    };
    // SAFETY: G_FMT/S_FMT fill a v4l2_format; the pix member is the one a capture
    // buffer type uses.
    let pix = unsafe {
        ioctl(fd, abi::VIDIOC_G_FMT, "VIDIOC_G_FMT", &mut fmt)?;
        fmt.fmt.pix.width = width;
        fmt.fmt.pix.height = height;
        fmt.fmt.pix.pixelformat = u32::from_le_bytes(format.fourcc());
        fmt.fmt.pix.field = abi::FIELD_ANY;
        ioctl(fd, abi::VIDIOC_S_FMT, "VIDIOC_S_FMT", &mut fmt)?;
        fmt.fmt.pix
    };
    let granted = PixelFormat::from_fourcc(pix.pixelformat.to_le_bytes())
        .context("the driver granted a pixel format this runtime cannot read")?;
    ensure!(
        pix.width > 0 && pix.height > 0,
        "the driver granted an empty frame size"
    );
    // A driver may grant more than was asked: never map and decode past the limit.
    ensure!(
        pix.width as u64 * pix.height as u64 <= max_pixels,
        "the driver granted {}x{}, over pipeline.max_frame_pixels ({max_pixels})",
        pix.width,
        pix.height
    );
    Ok((pix, granted))
}

/// Ask for a frame rate; the rate granted, for logs. Not every driver lets it be set (then
/// the camera runs at its own, and this says so).
fn set_frame_rate(fd: &OwnedFd, fps: u32, path: &Path) -> String {
    let mut parm = abi::StreamParm {
        type_: abi::BUF_TYPE_VIDEO_CAPTURE,
        ..Default::default()
    };
    parm.parm.capture = abi::CaptureParm {
        capability: 0,
        capturemode: 0,
        timeperframe: abi::Fract {
            numerator: 1,
            denominator: fps,
        },
        extendedmode: 0,
        readbuffers: 0,
        reserved: [0; 4],
    };
    // SAFETY: S_PARM fills a v4l2_streamparm whose capture member a capture type uses.
    match unsafe { ioctl(fd, abi::VIDIOC_S_PARM, "VIDIOC_S_PARM", &mut parm) } {
        Ok(()) => {
            // SAFETY: as above.
            let t = unsafe { parm.parm.capture.timeperframe };
            format!("{:.1}", t.denominator as f64 / t.numerator.max(1) as f64)
        }
        Err(e) => {
            log::warn!(
                "camera {}: {e:#}; it runs at the driver's frame rate",
                path.display()
            );
            "driver's".into()
        }
    }
}

/// Request `count` capture buffers and map each read-only.
fn map_buffers(fd: &OwnedFd, count: u32) -> Result<Vec<Mapped>> {
    let mut req = abi::RequestBuffers {
        count,
        type_: abi::BUF_TYPE_VIDEO_CAPTURE,
        memory: abi::MEMORY_MMAP,
        ..Default::default()
    };
    // SAFETY: REQBUFS fills a v4l2_requestbuffers.
    unsafe { ioctl(fd, abi::VIDIOC_REQBUFS, "VIDIOC_REQBUFS", &mut req)? };
    ensure!(req.count > 0, "the driver granted no capture buffers");
    let mut buffers = Vec::with_capacity(req.count as usize);
    for index in 0..req.count {
        let mut buf = abi::Buffer {
            index,
            type_: abi::BUF_TYPE_VIDEO_CAPTURE,
            memory: abi::MEMORY_MMAP,
            ..Default::default()
        };
        // SAFETY: QUERYBUF fills a v4l2_buffer; for MMAP buffers `m.offset` is set.
        let offset = unsafe {
            ioctl(fd, abi::VIDIOC_QUERYBUF, "VIDIOC_QUERYBUF", &mut buf)?;
            buf.m.offset
        };
        let len = buf.length as usize;
        ensure!(len > 0, "the driver gave capture buffer {index} no length");
        // SAFETY: maps the driver's buffer read-only; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(anyhow::Error::new(std::io::Error::last_os_error())
                .context(format!("cannot map capture buffer {index}")));
        }
        buffers.push(Mapped { ptr, len });
    }
    Ok(buffers)
}
