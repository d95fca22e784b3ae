//! The `snapshot` JPEG: the whole frame (not only the ROI: the operator checks where the
//! camera points), at most `commands.snapshot_max_px` on its longest side, encoded like an
//! event's evidence and halved until the PUBLISH fits `mqtt.max_packet_bytes`.

use anyhow::Result;
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::daemon::incidents::evidence::{encode_jpeg, shrink_to};
use crate::daemon::mqtt::packet;

/// The smallest side a snapshot is shrunk to before it is given up.
const MIN_SIDE: u32 = 16;

/// An encoded snapshot and its size.
pub struct Jpeg {
    pub bytes: Vec<u8>,
    pub size: (u32, u32),
}

/// The JPEG, or none when even a small one does not fit in a packet.
pub fn jpeg(
    frame: &RgbImage,
    topic: &str,
    max_px: u32,
    quality: u8,
    max_packet: usize,
) -> Result<Option<Jpeg>> {
    let mut pic = shrink_to(frame.clone(), max_px);
    loop {
        let bytes = encode_jpeg(&pic, quality)?;
        if packet::fits(topic, bytes.len(), max_packet) {
            let size = pic.dimensions();
            return Ok(Some(Jpeg { bytes, size }));
        }
        let (w, h) = pic.dimensions();
        if w.min(h) / 2 < MIN_SIDE {
            return Ok(None);
        }
        pic = imageops::resize(&pic, w / 2, h / 2, FilterType::Triangle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_packet_or_none() {
        let mut state = 1u32;
        let frame = RgbImage::from_fn(800, 600, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        let full = jpeg(&frame, "t/s", 640, 90, 1 << 20).unwrap().unwrap();
        assert_eq!(full.size, (640, 480));
        let (full, small) = (
            full.bytes,
            jpeg(&frame, "t/s", 640, 90, 30_000).unwrap().unwrap(),
        );
        let (small, small_size) = (small.bytes, small.size);
        assert!(full.len() > 30_000 && packet::fits("t/s", small.len(), 30_000));
        assert!(small_size.0 < 640);
        assert_eq!(
            image::load_from_memory(&small).unwrap().width(),
            small_size.0
        );
        assert!(jpeg(&frame, "t/s", 640, 90, 200).unwrap().is_none());
    }
}
