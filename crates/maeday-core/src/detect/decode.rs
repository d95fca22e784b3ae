//! Bounded image decoding: the one way bytes from outside become pixels.
//!
//! Frames come from files (replays, `score`/`eval`/`enroll`/`calibrate`) and from cameras
//! (MJPEG buffers); none of them is trusted. A 43-byte GIF can declare a 65535x65535
//! logical screen, a 300 KiB PNG can inflate to 16000x16000 pixels: decoding either
//! without a bound allocates gigabytes (or aborts the process). So every decode here
//!
//! 1. reads the header only and refuses a frame over [`DecodeLimits::max_pixels`] before
//!    any pixel buffer exists (the error names the size and the limit);
//! 2. hands the `image` crate the same bound as [`image::Limits`] (`max_image_width`,
//!    `max_image_height`, `max_alloc`), so the decoders' own buffers (GIF canvases, PNG
//!    rows) are bounded too;
//! 3. refuses a JPEG without its end-of-image marker: the `image` crate's JPEG decoder
//!    (zune-jpeg, non-strict) fills a truncated scan with grey and reports success, so a
//!    cut-off MJPEG buffer or file would otherwise be scored as a real frame.
//!
//! Peak memory per frame is then at most [`DecodeLimits::max_alloc`] for the decoder plus
//! 3 bytes per pixel for the RGB copy (and the file's bytes, themselves capped).

use std::io::{Cursor, Read};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

/// Default of `pipeline.max_frame_pixels`: 32 Mi pixels, enough for 8K UHD (7680x4320)
/// and 24 Mpx stills (6000x4000), about 100 MB as RGB.
pub const DEFAULT_MAX_FRAME_PIXELS: u64 = 32 << 20;

/// The range `pipeline.max_frame_pixels` accepts: from 64x64 up to 256 Mi pixels (a
/// decoder may then need 2 GiB: more makes no sense on an edge device).
pub const MAX_FRAME_PIXELS_RANGE: std::ops::RangeInclusive<u64> = 4096..=(256 << 20);

/// Bytes per pixel a decoder may need: 16-bit RGBA, the widest colour type of the formats
/// the runtime reads (PNG, TIFF, PNM); 32-bit float TIFFs are refused by the same bound.
const DECODER_BYTES_PER_PIXEL: u64 = 8;

/// Headroom over the output buffer for a decoder's own state (palettes, row buffers).
const DECODER_SLACK_BYTES: u64 = 4 << 20;

/// All the frames of a GIF replay are decoded once, at open, and held in memory: at most
/// this many bytes of them (RGB). A clip is a test or demo input; a longer one belongs in
/// a folder of images, which is decoded lazily.
pub const GIF_CLIP_MAX_BYTES: u64 = 512 << 20;

/// How large a decoded frame may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Width x height at most this (the decoder refuses bigger frames from the header).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: DEFAULT_MAX_FRAME_PIXELS,
        }
    }
}

impl DecodeLimits {
    pub fn new(max_pixels: u64) -> DecodeLimits {
        DecodeLimits { max_pixels }
    }

    /// The most a decoder may allocate for one frame (output buffer included).
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels
            .saturating_mul(DECODER_BYTES_PER_PIXEL)
            .saturating_add(DECODER_SLACK_BYTES)
    }

    /// The largest encoded file read for one frame: an uncompressed format (BMP, PNM)
    /// never needs more than the decoded frame.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_alloc()
    }

    /// The same bounds, for the `image` crate's decoders.
    pub fn image_limits(&self) -> image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut l = image::Limits::default();
        l.max_image_width = Some(side);
        l.max_image_height = Some(side);
        l.max_alloc = Some(self.max_alloc());
        l
    }

    /// Refuse a `width` x `height` frame over the limit (or empty).
    pub fn check(&self, width: u32, height: u32) -> Result<()> {
        ensure!(
            width > 0 && height > 0,
            "the frame is empty ({width}x{height})"
        );
        let pixels = width as u64 * height as u64;
        ensure!(
            pixels <= self.max_pixels,
            "the frame is {width}x{height} ({pixels} pixels), over the limit of {} pixels \
             (pipeline.max_frame_pixels)",
            self.max_pixels
        );
        Ok(())
    }
}

/// A JPEG ends with its EOI marker (FF D9); camera drivers may pad the buffer with zeros.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

/// Decode one image (any supported format, guessed from the bytes) within `limits`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DynamicImage> {
    decode_guessing(bytes, None, limits)
}

/// Decode with the format guessed from the bytes, else `hint` (a file's extension).
fn decode_guessing(
    bytes: &[u8],
    hint: Option<ImageFormat>,
    limits: &DecodeLimits,
) -> Result<DynamicImage> {
    let mut reader = ImageReader::new(Cursor::new(bytes));
    if let Some(f) = hint {
        reader.set_format(f);
    }
    let reader = reader
        .with_guessed_format()
        .context("cannot read the image")?;
    let Some(format) = reader.format() else {
        bail!("not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, PNM)");
    };
    decode_reader(reader, bytes, format, limits)
}

/// Decode bytes that must be one `format` image (e.g. an MJPEG buffer) within `limits`.
pub fn decode_as(bytes: &[u8], format: ImageFormat, limits: &DecodeLimits) -> Result<DynamicImage> {
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    decode_reader(reader, bytes, format, limits)
}

fn decode_reader(
    mut reader: ImageReader<Cursor<&[u8]>>,
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<DynamicImage> {
    if format == ImageFormat::Jpeg {
        ensure!(
            jpeg_is_complete(bytes),
            "truncated JPEG: no end-of-image marker ({} bytes)",
            bytes.len()
        );
    }
    // The header only: no pixel buffer exists yet. The size check comes first so the
    // error names the size; the image limits then bound what the decoder allocates.
    let mut image_limits = limits.image_limits();
    reader.limits(image_limits.clone());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| limit_error(e, limits))
        .context("cannot read the image header")?;
    let (w, h) = decoder.dimensions();
    limits.check(w, h)?;
    image_limits
        .reserve(decoder.total_bytes())
        .map_err(|e| limit_error(e, limits))?;
    decoder
        .set_limits(image_limits)
        .map_err(|e| limit_error(e, limits))?;
    DynamicImage::from_decoder(decoder)
        .map_err(|e| limit_error(e, limits))
        .context("corrupt or truncated image")
}

/// The `image` crate's limit errors say only "limits exceeded": name ours.
fn limit_error(e: image::ImageError, limits: &DecodeLimits) -> anyhow::Error {
    match e {
        image::ImageError::Limits(l) => anyhow::anyhow!(
            "{l}: the frame needs more than {} bytes to decode (pipeline.max_frame_pixels = {})",
            limits.max_alloc(),
            limits.max_pixels
        ),
        other => other.into(),
    }
}

/// Decode one image into RGB (grey is replicated, alpha dropped).
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage> {
    Ok(decode(bytes, limits)?.into_rgb8())
}

/// Read a file for decoding, refusing one larger than any frame within `limits` can be.
pub fn read_bounded(path: &Path, limits: &DecodeLimits) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?;
    let max = limits.max_file_bytes();
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    ensure!(
        bytes.len() as u64 <= max,
        "{} is larger than {max} bytes, more than any frame within pipeline.max_frame_pixels = {}",
        path.display(),
        limits.max_pixels
    );
    Ok(bytes)
}

/// Decode an image file within `limits`, with the path in every error.
pub fn load(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage> {
    let bytes = read_bounded(path, limits)?;
    decode_guessing(&bytes, ImageFormat::from_path(path).ok(), limits)
        .with_context(|| format!("cannot decode image {}", path.display()))
}

/// The size of an image file from its header alone (nothing is decoded).
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .into_dimensions()
        .with_context(|| format!("cannot read the header of {}", path.display()))
}

/// Every frame of an animated GIF, composited, within `limits` per frame and
/// [`GIF_CLIP_MAX_BYTES`] in all. A GIF that goes bad part way keeps the frames before
/// the damage: they come back with the error.
pub fn gif_frames(bytes: &[u8], limits: &DecodeLimits) -> (Vec<RgbImage>, Option<anyhow::Error>) {
    let mut frames = Vec::new();
    let err = (|| -> Result<()> {
        let mut decoder = GifDecoder::new(Cursor::new(bytes)).context("not a readable GIF")?;
        // The logical screen is the size of every composited frame.
        let (w, h) = decoder.dimensions();
        limits.check(w, h).context("the GIF's logical screen")?;
        decoder
            .set_limits(limits.image_limits())
            .map_err(|e| limit_error(e, limits))?;
        let frame_bytes = w as u64 * h as u64 * 3;
        for frame in decoder.into_frames() {
            let frame = frame
                .map_err(|e| limit_error(e, limits))
                .with_context(|| format!("corrupt GIF after {} frames", frames.len()))?;
            ensure!(
                (frames.len() as u64 + 1) * frame_bytes <= GIF_CLIP_MAX_BYTES,
                "the GIF has more than the {} frames of {w}x{h} that fit in {} MiB: \
                 replay a folder of images instead",
                frames.len(),
                GIF_CLIP_MAX_BYTES >> 20
            );
            frames.push(DynamicImage::ImageRgba8(frame.into_buffer()).into_rgb8());
        }
        ensure!(!frames.is_empty(), "the GIF has no frames");
        Ok(())
    })()
    .err();
    (frames, err)
}

/// A GIF whose 65535x65535 logical screen holds one 1x1 frame (43 bytes): the attack the
/// frame limits exist for (a naive decoder allocates 17 GB for it). The unit tests, the
/// replay source's tests and `tests/hostile` feed it to every decode path.
pub fn screen_bomb_gif() -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x80, 0, 0]); // screen, 2-colour table
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    g.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]); // graphic control extension
    g.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // 1x1 image at (0, 0)
    g.extend_from_slice(&[2, 2, 0x44, 0x01, 0, 0x3B]); // LZW data, trailer
    g
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn sample(name: &str) -> Vec<u8> {
        std::fs::read(
            crate::model::bundled::source_tree()
                .join("models/samples")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn frames_within_the_limit_decode_and_larger_ones_are_refused_from_the_header() {
        let bytes = sample("coffee.png");
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        let (w, h) = (img.width(), img.height());
        let exact = DecodeLimits::new(w as u64 * h as u64);
        assert_eq!(decode_rgb(&bytes, &exact).unwrap().dimensions(), (w, h));
        let e = format!(
            "{:#}",
            decode(&bytes, &DecodeLimits::new(w as u64 * h as u64 - 1)).unwrap_err()
        );
        assert!(
            e.contains(&format!("{w}x{h}")) && e.contains("max_frame_pixels"),
            "{e}"
        );
    }

    #[test]
    fn a_gif_screen_bomb_is_refused_before_allocating() {
        let g = screen_bomb_gif();
        assert_eq!(g.len(), 43);
        let (frames, err) = gif_frames(&g, &DecodeLimits::default());
        assert!(frames.is_empty());
        let e = format!("{:#}", err.expect("refused"));
        assert!(e.contains("65535x65535"), "{e}");
        let e = format!("{:#}", decode(&g, &DecodeLimits::default()).unwrap_err());
        assert!(e.contains("65535x65535"), "{e}");
    }

    #[test]
    fn a_truncated_jpeg_is_corrupt_and_a_padded_one_is_not() {
        let img =
            image::open(crate::model::bundled::source_tree().join("models/samples/chelsea.png"))
                .unwrap();
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let l = DecodeLimits::default();
        decode(&jpeg, &l).unwrap();
        let e = format!("{:#}", decode(&jpeg[..jpeg.len() * 2 / 3], &l).unwrap_err());
        assert!(e.contains("truncated JPEG"), "{e}");
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0; 100]);
        decode_as(&padded, ImageFormat::Jpeg, &l).unwrap();
    }

    #[test]
    fn a_highly_compressed_huge_png_is_refused_from_its_header() {
        let big = DynamicImage::ImageLuma8(image::GrayImage::new(8000, 8000));
        let bytes = png(&big);
        assert!(bytes.len() < 1 << 20);
        let e = format!(
            "{:#}",
            decode(&bytes, &DecodeLimits::new(1 << 20)).unwrap_err()
        );
        assert!(e.contains("8000x8000"), "{e}");
        assert_eq!(
            decode(&bytes, &DecodeLimits::new(64 << 20))
                .unwrap()
                .width(),
            8000
        );
    }
}
