//! The slice of the Linux V4L2 ABI the camera source uses, written out once by hand from
//! `<linux/videodev2.h>` for LP64 Linux (x86-64 and aarch64 share these layouts).
//!
//! Why not generated bindings: generating them (bindgen) needs libclang at build time, and
//! the daemon's default build must need nothing but cargo. The kernel keeps this ABI stable,
//! so the few structs and ioctl numbers below do not drift. Two checks keep them honest:
//! compile-time asserts pin every size and offset on every target this crate builds for,
//! and `tests/v4l2_abi.rs` compiles [`LAYOUT`] against the kernel headers with the system C
//! compiler (x86-64, and arm64 where the cross compiler is installed), so a typo here is a
//! failed test, not a corrupted ioctl.

use std::mem::{offset_of, size_of};

pub const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
pub const MEMORY_MMAP: u32 = 1;
pub const FIELD_ANY: u32 = 0;
/// `V4L2_BUF_FLAG_ERROR`: the driver delivered the buffer but its data is damaged.
pub const BUF_FLAG_ERROR: u32 = 0x0000_0040;
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
pub const CAP_STREAMING: u32 = 0x0400_0000;
/// `device_caps` is filled in (every driver since Linux 3.4).
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
/// `V4L2_CAP_TIMEPERFRAME` in `v4l2_captureparm.capability`.
pub const CAP_TIMEPERFRAME: u32 = 0x1000;

/// `struct v4l2_capability`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Capability {
    pub driver: [u8; 16],
    pub card: [u8; 32],
    pub bus_info: [u8; 32],
    pub version: u32,
    pub capabilities: u32,
    pub device_caps: u32,
    pub reserved: [u32; 3],
}

/// `struct v4l2_pix_format` (single-planar).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
    pub colorspace: u32,
    pub priv_: u32,
    pub flags: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
    pub xfer_func: u32,
}

/// The `fmt` union of `struct v4l2_format`: 200 bytes, 8-aligned (its `v4l2_window` member
/// holds pointers), so `Format` is 208 bytes on LP64.
#[repr(C)]
#[derive(Clone, Copy)]
pub union FormatUnion {
    pub pix: PixFormat,
    pub raw_data: [u8; 200],
    _align: [u64; 25],
}

/// `struct v4l2_format`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Format {
    pub type_: u32,
    pub fmt: FormatUnion,
}

/// `struct v4l2_fract`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Fract {
    pub numerator: u32,
    pub denominator: u32,
}

/// `struct v4l2_captureparm`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureParm {
    pub capability: u32,
    pub capturemode: u32,
    pub timeperframe: Fract,
    pub extendedmode: u32,
    pub readbuffers: u32,
    pub reserved: [u32; 4],
}

/// The `parm` union of `struct v4l2_streamparm` (200 bytes, 4-aligned).
#[repr(C)]
#[derive(Clone, Copy)]
pub union StreamParmUnion {
    pub capture: CaptureParm,
    pub raw_data: [u8; 200],
}

/// `struct v4l2_streamparm`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StreamParm {
    pub type_: u32,
    pub parm: StreamParmUnion,
}

/// `struct v4l2_requestbuffers`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RequestBuffers {
    pub count: u32,
    pub type_: u32,
    pub memory: u32,
    pub capabilities: u32,
    pub flags: u8,
    pub reserved: [u8; 3],
}

/// `struct timeval` as the kernel's V4L2 ABI carries it on LP64 (two 64-bit fields).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Timeval {
    pub tv_sec: i64,
    pub tv_usec: i64,
}

/// `struct v4l2_timecode`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Timecode {
    pub type_: u32,
    pub flags: u32,
    pub frames: u8,
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub userbits: [u8; 4],
}

/// The `m` union of `struct v4l2_buffer` (`offset` for MMAP buffers; 8 bytes on LP64).
#[repr(C)]
#[derive(Clone, Copy)]
pub union BufferM {
    pub offset: u32,
    pub userptr: u64,
    pub fd: i32,
}

/// `struct v4l2_buffer`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    pub index: u32,
    pub type_: u32,
    pub bytesused: u32,
    pub flags: u32,
    pub field: u32,
    pub timestamp: Timeval,
    pub timecode: Timecode,
    pub sequence: u32,
    pub memory: u32,
    pub m: BufferM,
    pub length: u32,
    pub reserved2: u32,
    /// `request_fd` / `reserved`.
    pub request_fd: i32,
}

macro_rules! zeroed_default {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // SAFETY: a plain-old-data C struct of integers and byte arrays, for
                // which all-zero bytes is a valid value (and what the kernel expects in
                // reserved fields).
                unsafe { std::mem::zeroed() }
            }
        }
    )*};
}
zeroed_default!(Capability, Format, StreamParm, RequestBuffers, Buffer);

// ioctl numbers, the asm-generic encoding used by x86 and arm64:
// dir << 30 | size << 16 | type << 8 | nr, with read = 2 and write = 1.
const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr) as u64
}
const fn ior(nr: u32, size: usize) -> u64 {
    ioc(2, nr, size)
}
const fn iow(nr: u32, size: usize) -> u64 {
    ioc(1, nr, size)
}
const fn iowr(nr: u32, size: usize) -> u64 {
    ioc(3, nr, size)
}

pub const VIDIOC_QUERYCAP: u64 = ior(0, size_of::<Capability>());
pub const VIDIOC_G_FMT: u64 = iowr(4, size_of::<Format>());
pub const VIDIOC_S_FMT: u64 = iowr(5, size_of::<Format>());
pub const VIDIOC_REQBUFS: u64 = iowr(8, size_of::<RequestBuffers>());
pub const VIDIOC_QUERYBUF: u64 = iowr(9, size_of::<Buffer>());
pub const VIDIOC_QBUF: u64 = iowr(15, size_of::<Buffer>());
pub const VIDIOC_DQBUF: u64 = iowr(17, size_of::<Buffer>());
pub const VIDIOC_STREAMON: u64 = iow(18, size_of::<i32>());
pub const VIDIOC_STREAMOFF: u64 = iow(19, size_of::<i32>());
pub const VIDIOC_G_PARM: u64 = iowr(21, size_of::<StreamParm>());
pub const VIDIOC_S_PARM: u64 = iowr(22, size_of::<StreamParm>());

/// Every size, offset and ioctl number above as (C expression, value): the test compiles
/// `_Static_assert(expr == value)` for each against `<linux/videodev2.h>`.
pub const LAYOUT: &[(&str, u64)] = &[
    (
        "sizeof(struct v4l2_capability)",
        size_of::<Capability>() as u64,
    ),
    (
        "offsetof(struct v4l2_capability, capabilities)",
        offset_of!(Capability, capabilities) as u64,
    ),
    (
        "offsetof(struct v4l2_capability, device_caps)",
        offset_of!(Capability, device_caps) as u64,
    ),
    (
        "sizeof(struct v4l2_pix_format)",
        size_of::<PixFormat>() as u64,
    ),
    (
        "offsetof(struct v4l2_pix_format, pixelformat)",
        offset_of!(PixFormat, pixelformat) as u64,
    ),
    (
        "offsetof(struct v4l2_pix_format, field)",
        offset_of!(PixFormat, field) as u64,
    ),
    (
        "offsetof(struct v4l2_pix_format, sizeimage)",
        offset_of!(PixFormat, sizeimage) as u64,
    ),
    (
        "offsetof(struct v4l2_pix_format, xfer_func)",
        offset_of!(PixFormat, xfer_func) as u64,
    ),
    ("sizeof(struct v4l2_format)", size_of::<Format>() as u64),
    (
        "offsetof(struct v4l2_format, fmt)",
        offset_of!(Format, fmt) as u64,
    ),
    (
        "sizeof(struct v4l2_captureparm)",
        size_of::<CaptureParm>() as u64,
    ),
    (
        "offsetof(struct v4l2_captureparm, timeperframe)",
        offset_of!(CaptureParm, timeperframe) as u64,
    ),
    (
        "sizeof(struct v4l2_streamparm)",
        size_of::<StreamParm>() as u64,
    ),
    (
        "offsetof(struct v4l2_streamparm, parm)",
        offset_of!(StreamParm, parm) as u64,
    ),
    (
        "sizeof(struct v4l2_requestbuffers)",
        size_of::<RequestBuffers>() as u64,
    ),
    (
        "offsetof(struct v4l2_requestbuffers, memory)",
        offset_of!(RequestBuffers, memory) as u64,
    ),
    ("sizeof(struct v4l2_timecode)", size_of::<Timecode>() as u64),
    ("sizeof(struct v4l2_buffer)", size_of::<Buffer>() as u64),
    (
        "offsetof(struct v4l2_buffer, bytesused)",
        offset_of!(Buffer, bytesused) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, flags)",
        offset_of!(Buffer, flags) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, timestamp)",
        offset_of!(Buffer, timestamp) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, timecode)",
        offset_of!(Buffer, timecode) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, sequence)",
        offset_of!(Buffer, sequence) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, memory)",
        offset_of!(Buffer, memory) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, m)",
        offset_of!(Buffer, m) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, length)",
        offset_of!(Buffer, length) as u64,
    ),
    (
        "offsetof(struct v4l2_buffer, request_fd)",
        offset_of!(Buffer, request_fd) as u64,
    ),
    ("V4L2_BUF_TYPE_VIDEO_CAPTURE", BUF_TYPE_VIDEO_CAPTURE as u64),
    ("V4L2_MEMORY_MMAP", MEMORY_MMAP as u64),
    ("V4L2_FIELD_ANY", FIELD_ANY as u64),
    ("V4L2_BUF_FLAG_ERROR", BUF_FLAG_ERROR as u64),
    ("V4L2_CAP_VIDEO_CAPTURE", CAP_VIDEO_CAPTURE as u64),
    ("V4L2_CAP_STREAMING", CAP_STREAMING as u64),
    ("V4L2_CAP_DEVICE_CAPS", CAP_DEVICE_CAPS as u64),
    ("V4L2_CAP_TIMEPERFRAME", CAP_TIMEPERFRAME as u64),
    ("VIDIOC_QUERYCAP", VIDIOC_QUERYCAP),
    ("VIDIOC_G_FMT", VIDIOC_G_FMT),
    ("VIDIOC_S_FMT", VIDIOC_S_FMT),
    ("VIDIOC_REQBUFS", VIDIOC_REQBUFS),
    ("VIDIOC_QUERYBUF", VIDIOC_QUERYBUF),
    ("VIDIOC_QBUF", VIDIOC_QBUF),
    ("VIDIOC_DQBUF", VIDIOC_DQBUF),
    ("VIDIOC_STREAMON", VIDIOC_STREAMON),
    ("VIDIOC_STREAMOFF", VIDIOC_STREAMOFF),
    ("VIDIOC_G_PARM", VIDIOC_G_PARM),
    ("VIDIOC_S_PARM", VIDIOC_S_PARM),
];

// The LP64 layout, pinned on every target the crate compiles for (x86-64, aarch64): the
// values `tests/v4l2_abi.rs` checked against the C headers.
const _: () = {
    assert!(size_of::<Capability>() == 104);
    assert!(size_of::<PixFormat>() == 48);
    assert!(size_of::<Format>() == 208);
    assert!(offset_of!(Format, fmt) == 8);
    assert!(size_of::<StreamParm>() == 204);
    assert!(size_of::<RequestBuffers>() == 20);
    assert!(size_of::<Buffer>() == 88);
    assert!(offset_of!(Buffer, timestamp) == 24);
    assert!(offset_of!(Buffer, m) == 64);
    assert!(offset_of!(Buffer, length) == 72);
    assert!(VIDIOC_DQBUF == 0xc058_5611);
    assert!(VIDIOC_S_FMT == 0xc0d0_5605);
};
