//! An event's evidence: the heatmap over the frame where it peaked, cropped round the
//! strongest blob, as one JPEG message.
//!
//! The peak frame's pixels and map are kept (copied once each time the peak rises) and the
//! JPEG is encoded only when a lifecycle message goes out with a new peak, so its cost is
//! per event peak, not per frame. Like masks (`mqtt::packet`), the JPEG is halved until the
//! whole PUBLISH fits under `mqtt.max_packet_bytes`; what cannot fit is dropped.

use anyhow::Result;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::RgbImage;

use crate::daemon::mqtt::packet;
use crate::daemon::payload::FrameResult;
use crate::detect::eq1::AnomalyMap;
use crate::detect::render;

/// The smallest side an evidence picture is shrunk to before it is given up.
const MIN_SIDE: u32 = 16;

/// The peak frame of an event, kept until its evidence is encoded.
#[derive(Debug, Clone)]
pub struct PeakFrame {
    /// The ROI's pixels.
    image: RgbImage,
    map: AnomalyMap,
    roi: [u32; 4],
    pixel_threshold: Option<f32>,
    score: f32,
    /// The strongest blob, in frame pixels.
    bbox: Option<[u32; 4]>,
}

/// How the evidence is encoded (`[events]`).
#[derive(Debug, Clone, Copy)]
pub struct EvidenceSettings {
    pub max_px: u32,
    pub quality: u8,
    pub max_packet: usize,
}

impl PeakFrame {
    /// A copy of what the evidence needs; none when the frame's pixels were not kept.
    pub fn of(r: &FrameResult) -> Option<PeakFrame> {
        let p = &r.payload;
        Some(PeakFrame {
            image: r.roi_image.clone()?,
            map: r.map.clone(),
            roi: p.roi,
            pixel_threshold: p.pixel_threshold,
            score: p.score,
            bbox: p.blobs.first().map(|b| b.bbox),
        })
    }

    /// The heatmap overlay cropped round the strongest blob (a margin of half its longest
    /// side, at least 32 px, on each side), at most `max_px` on its longest side.
    pub fn picture(&self, max_px: u32) -> RgbImage {
        let vmax = render::heatmap_scale(self.pixel_threshold, self.score);
        let overlay = render::heatmap_overlay(&self.image, &self.map, vmax);
        let (w, h) = overlay.dimensions();
        let crop = match self.bbox {
            Some([x, y, bw, bh]) => {
                let (x, y) = (x.saturating_sub(self.roi[0]), y.saturating_sub(self.roi[1]));
                let margin = (bw.max(bh) / 2).max(32);
                let (x0, y0) = (x.saturating_sub(margin), y.saturating_sub(margin));
                let x1 = x.saturating_add(bw).saturating_add(margin).min(w);
                let y1 = y.saturating_add(bh).saturating_add(margin).min(h);
                if x0 < x1 && y0 < y1 {
                    imageops::crop_imm(&overlay, x0, y0, x1 - x0, y1 - y0).to_image()
                } else {
                    overlay
                }
            }
            None => overlay,
        };
        shrink_to(crop, max_px)
    }

    /// The evidence JPEG for `topic`, made to fit in one packet; none if it cannot.
    pub fn jpeg(&self, topic: &str, s: EvidenceSettings) -> Result<Option<Vec<u8>>> {
        let mut pic = self.picture(s.max_px);
        loop {
            let bytes = encode_jpeg(&pic, s.quality)?;
            if packet::fits(topic, bytes.len(), s.max_packet) {
                return Ok(Some(bytes));
            }
            let (w, h) = pic.dimensions();
            if w.min(h) / 2 < MIN_SIDE {
                log::warn!(
                    "{topic}: evidence of {} bytes does not fit in mqtt.max_packet_bytes even at {w}x{h}: dropped",
                    bytes.len()
                );
                return Ok(None);
            }
            pic = imageops::resize(&pic, w / 2, h / 2, FilterType::Triangle);
        }
    }
}

/// At most `max_px` on the longest side, aspect kept.
pub fn shrink_to(img: RgbImage, max_px: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let longest = w.max(h);
    if longest <= max_px {
        return img;
    }
    let scale = max_px as f64 / longest as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    imageops::resize(&img, nw, nh, FilterType::Triangle)
}

pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality).encode_image(img)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(w: u32, h: u32, bbox: Option<[u32; 4]>) -> PeakFrame {
        let mut state = 7u32;
        let image = RgbImage::from_fn(w, h, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        PeakFrame {
            image,
            map: AnomalyMap::zeros(28, 28),
            roi: [100, 50, w, h],
            pixel_threshold: Some(1.0),
            score: 3.0,
            bbox,
        }
    }

    #[test]
    fn the_crop_surrounds_the_strongest_blob() {
        // A 40x20 blob at (300, 150) in frame pixels = (200, 100) in the ROI: 32 px margins.
        let p = peak(640, 480, Some([300, 150, 40, 20]));
        assert_eq!(p.picture(4096).dimensions(), (40 + 64, 20 + 64));
        // No blob: the whole ROI, shrunk to the longest side asked.
        assert_eq!(peak(640, 480, None).picture(320).dimensions(), (320, 240));
    }

    #[test]
    fn the_jpeg_is_halved_until_it_fits_or_dropped() {
        let p = peak(512, 512, None);
        let s = EvidenceSettings {
            max_px: 512,
            quality: 95,
            max_packet: 1 << 20,
        };
        let full = p.jpeg("t/evidence", s).unwrap().unwrap();
        let img = image::load_from_memory(&full).unwrap();
        assert_eq!((img.width(), img.height()), (512, 512));
        let small = EvidenceSettings {
            max_packet: 20_000,
            ..s
        };
        let fitted = p.jpeg("t/evidence", small).unwrap().unwrap();
        assert!(full.len() > 20_000, "{}", full.len());
        assert!(packet::fits("t/evidence", fitted.len(), 20_000));
        assert!(image::load_from_memory(&fitted).unwrap().width() < 512);
        let none = EvidenceSettings {
            max_packet: 1024,
            ..s
        };
        // A topic near the limit leaves no room even for a tiny picture.
        assert!(p.jpeg(&"t".repeat(900), none).unwrap().is_none());
    }
}
