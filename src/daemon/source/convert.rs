//! Camera buffers to RGB frames: the pixel formats V4L2 cameras deliver (issue 4).
//!
//! Kept apart from the device-open code so it can be tested on real frame buffers without a
//! camera. A driver hands over a buffer whose *length* is the allocation and whose
//! `bytesused` is what the frame occupies: callers pass only the `bytesused` prefix, and a
//! buffer shorter than the format needs is an error (a truncated or corrupt frame), never a
//! panic. MJPEG goes through [`crate::detect::decode`]: bounded by the negotiated size, and a JPEG
//! cut short (no end-of-image marker) is corrupt, not a grey-filled frame.

use anyhow::{bail, ensure, Context, Result};
use image::{DynamicImage, GrayImage, RgbImage};

use crate::detect::decode::{self, DecodeLimits};

/// The pixel formats the runtime accepts from a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Motion JPEG: each buffer is one JPEG image.
    Mjpeg,
    /// YUV 4:2:2 packed as Y0 U Y1 V (2 bytes per pixel), BT.601 limited range.
    Yuyv,
    /// 8-bit luminance (1 byte per pixel).
    Grey,
}

impl PixelFormat {
    /// The V4L2 FourCC code of the format.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Grey => *b"GREY",
        }
    }

    pub fn from_fourcc(code: [u8; 4]) -> Result<PixelFormat> {
        Ok(match &code {
            b"MJPG" | b"JPEG" => PixelFormat::Mjpeg,
            b"YUYV" => PixelFormat::Yuyv,
            b"GREY" => PixelFormat::Grey,
            _ => bail!(
                "unsupported pixel format {:?} (supported: MJPG, YUYV, GREY)",
                String::from_utf8_lossy(&code)
            ),
        })
    }
}

/// Decode the used part of one camera buffer into an RGB frame of `width` x `height`.
pub fn to_rgb(format: PixelFormat, width: u32, height: u32, used: &[u8]) -> Result<RgbImage> {
    ensure!(width > 0 && height > 0, "empty frame size {width}x{height}");
    let pixels = width as usize * height as usize;
    match format {
        PixelFormat::Mjpeg => {
            // The stream was negotiated at this size: the decoder refuses a larger frame
            // from its header, before allocating, and a buffer cut short (no EOI marker).
            let limits = DecodeLimits::new(pixels as u64);
            let img = decode::decode_as(used, image::ImageFormat::Jpeg, &limits)
                .with_context(|| format!("corrupt MJPEG frame ({} bytes)", used.len()))?;
            ensure!(
                img.width() == width && img.height() == height,
                "MJPEG frame is {}x{}, the stream was negotiated at {width}x{height}",
                img.width(),
                img.height()
            );
            Ok(img.into_rgb8())
        }
        PixelFormat::Grey => {
            ensure!(
                used.len() >= pixels,
                "truncated GREY frame: {} bytes, {width}x{height} needs {pixels}",
                used.len()
            );
            let gray = GrayImage::from_raw(width, height, used[..pixels].to_vec())
                .context("GREY buffer size")?;
            Ok(DynamicImage::ImageLuma8(gray).to_rgb8())
        }
        PixelFormat::Yuyv => {
            ensure!(
                width.is_multiple_of(2),
                "YUYV needs an even width, got {width}"
            );
            ensure!(
                used.len() >= 2 * pixels,
                "truncated YUYV frame: {} bytes, {width}x{height} needs {}",
                used.len(),
                2 * pixels
            );
            let mut out = Vec::with_capacity(3 * pixels);
            for quad in used[..2 * pixels].chunks_exact(4) {
                let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
                out.extend_from_slice(&yuv_to_rgb(y0, u, v));
                out.extend_from_slice(&yuv_to_rgb(y1, u, v));
            }
            RgbImage::from_raw(width, height, out).context("YUYV buffer size")
        }
    }
}

/// BT.601 limited-range YCbCr to RGB (what UVC webcams send), fixed point.
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16).max(0) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn photo() -> RgbImage {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/samples/chelsea.png");
        image::open(p).unwrap().to_rgb8()
    }

    /// RGB to YUYV with the BT.601 limited-range forward transform (float, independent of
    /// the fixed-point decoder), chroma averaged over each pixel pair like a camera does.
    fn encode_yuyv(img: &RgbImage) -> Vec<u8> {
        let yuv = |p: &image::Rgb<u8>| {
            let (r, g, b) = (p[0] as f32, p[1] as f32, p[2] as f32);
            (
                16.0 + 0.257 * r + 0.504 * g + 0.098 * b,
                128.0 - 0.148 * r - 0.291 * g + 0.439 * b,
                128.0 + 0.439 * r - 0.368 * g - 0.071 * b,
            )
        };
        let mut out = Vec::new();
        for row in img.rows() {
            let px: Vec<_> = row.collect();
            for pair in px.chunks_exact(2) {
                let (y0, u0, v0) = yuv(pair[0]);
                let (y1, u1, v1) = yuv(pair[1]);
                let q = |x: f32| x.round().clamp(0.0, 255.0) as u8;
                out.extend_from_slice(&[q(y0), q((u0 + u1) / 2.0), q(y1), q((v0 + v1) / 2.0)]);
            }
        }
        out
    }

    fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        let mse = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
            .sum::<f64>()
            / a.as_raw().len() as f64;
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }

    #[test]
    fn yuyv_from_a_real_photo_decodes_back_to_it() {
        let img = photo();
        let (w, h) = img.dimensions();
        let mut buf = encode_yuyv(&img);
        // The driver's buffer is larger than the frame: only `bytesused` counts.
        let used = buf.len();
        buf.extend(std::iter::repeat_n(0xAB, 4096));
        let back = to_rgb(PixelFormat::Yuyv, w, h, &buf[..used]).unwrap();
        let db = psnr(&img, &back);
        assert!(db > 30.0, "YUYV round trip PSNR {db:.1} dB");
    }

    #[test]
    fn grey_and_mjpeg_buffers_decode() {
        let img = photo();
        let (w, h) = img.dimensions();
        let gray = DynamicImage::ImageRgb8(img.clone()).to_luma8();
        let rgb = to_rgb(PixelFormat::Grey, w, h, gray.as_raw()).unwrap();
        assert_eq!(rgb.get_pixel(10, 10)[0], gray.get_pixel(10, 10)[0]);
        assert_eq!(rgb.get_pixel(10, 10)[0], rgb.get_pixel(10, 10)[2]);
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img.clone())
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let back = to_rgb(PixelFormat::Mjpeg, w, h, &jpeg).unwrap();
        assert!(psnr(&img, &back) > 30.0);
        // A stream negotiated at another size is an error, not a silent resize; a frame
        // larger than negotiated is refused from its header, before it is decoded.
        assert!(to_rgb(PixelFormat::Mjpeg, w + 2, h, &jpeg).is_err());
        let e = format!(
            "{:#}",
            to_rgb(PixelFormat::Mjpeg, w / 2, h / 2, &jpeg).unwrap_err()
        );
        assert!(e.contains(&format!("{w}x{h}")), "{e}");
        // A buffer cut short is corrupt (the JPEG decoder alone would fill it with grey),
        // a buffer padded with zeros after the end-of-image marker is not.
        let e = format!(
            "{:#}",
            to_rgb(PixelFormat::Mjpeg, w, h, &jpeg[..jpeg.len() * 3 / 4]).unwrap_err()
        );
        assert!(e.contains("truncated JPEG"), "{e}");
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 4096]);
        to_rgb(PixelFormat::Mjpeg, w, h, &padded).unwrap();
    }

    #[test]
    fn truncated_or_corrupt_buffers_are_errors() {
        let img = photo();
        let (w, h) = img.dimensions();
        let yuyv = encode_yuyv(&img);
        let e = to_rgb(PixelFormat::Yuyv, w, h, &yuyv[..yuyv.len() / 2]).unwrap_err();
        assert!(e.to_string().contains("truncated YUYV"), "{e}");
        assert!(to_rgb(PixelFormat::Grey, w, h, &[0u8; 100]).is_err());
        assert!(to_rgb(PixelFormat::Mjpeg, w, h, &[0xFF, 0xD8, 0xFF, 0x00, 1, 2]).is_err());
        assert!(to_rgb(PixelFormat::Yuyv, 3, 2, &[0u8; 12]).is_err());
        assert!(PixelFormat::from_fourcc(*b"NV12").is_err());
        assert_eq!(
            PixelFormat::from_fourcc(PixelFormat::Yuyv.fourcc()).unwrap(),
            PixelFormat::Yuyv
        );
    }
}
