//! What the daemon publishes for each frame, and how it is encoded.
//!
//! A [`FrameResult`] is built once per scored frame; sinks turn it into messages: the result
//! (CBOR by default, JSON by option, the same serde struct for both), the binary mask PNG and
//! the heatmap PNG. The README documents every field with its unit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use image::{GrayImage, RgbImage};
use serde::Serialize;

use crate::config::PayloadFormat;
use crate::daemon::position::PositionStamp;
use crate::detect::detector::Detector;
use crate::detect::eq1::AnomalyMap;
use crate::detect::render;
use crate::eval::roc::label_regions;
use crate::model::manifest::Thresholds;

/// One region of the thresholded map, in frame pixels.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blob {
    /// `[x, y, width, height]` in frame pixels.
    pub bbox: [u32; 4],
    /// Pixels in the region, in frame pixels (scaled from the map).
    pub area_px: u32,
    /// The highest map value inside the region.
    pub peak: f32,
}

/// Milliseconds spent per stage for this frame.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyMs {
    /// From capture to the start of inference (waiting in the newest-frame slot).
    pub queue: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub scoring: f64,
    /// From capture to the result being ready for the sinks.
    pub total: f64,
}

/// The `<camera>/result` payload.
#[derive(Debug, Clone, Serialize)]
pub struct ResultPayload {
    pub device_id: String,
    pub camera: String,
    /// Which start of the daemon (a persisted counter, see [`crate::daemon::boot`]): `seq` restarts
    /// with every start, `(camera, boot, seq)` names a frame for good.
    pub boot: u64,
    /// Frame number from this camera since the daemon started (1, 2, ...); gaps are drops.
    pub seq: u64,
    /// Capture time, milliseconds since the Unix epoch (UTC).
    pub captured_unix_ms: u64,
    /// Image score: max of the anomaly map (Eq. 1 units: squared error of normalised pixels).
    pub score: f32,
    /// Thresholds in force (none until the model or camera is calibrated).
    pub image_threshold: Option<f32>,
    pub pixel_threshold: Option<f32>,
    /// score > image_threshold; absent without thresholds.
    pub anomalous: Option<bool>,
    pub blobs: Vec<Blob>,
    /// The frame `[width, height]` and the scored region `[x, y, width, height]`.
    pub frame_size: [u32; 2],
    pub roi: [u32; 4],
    /// A `<camera>/mask` PNG for this frame follows.
    pub mask: bool,
    pub latency_ms: LatencyMs,
    pub model_sha256: String,
    pub schedule: String,
    /// Windows scored (more than 1 with tiling).
    pub windows: usize,
    /// `maeday` (score in Eq. 1 units), `bank` or `ensemble` (standardised units).
    pub scorer: String,
    /// With `[position]`: where the camera was (stamped by the sink thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<PositionStamp>,
}

/// A scored frame on its way to the sinks.
pub struct FrameResult {
    pub payload: ResultPayload,
    /// The anomaly map over the ROI (at the model's working resolution).
    pub map: AnomalyMap,
    /// The ROI pixels, kept only when a heatmap is wanted (or the live page watches).
    pub roi_image: Option<RgbImage>,
    /// The whole frame, kept only while the live page watches and the ROI is a part of it.
    pub full_frame: Option<RgbImage>,
}

/// What the retained status says about the model.
#[derive(Debug, Clone)]
pub struct ServingModel {
    pub name: String,
    pub sha256: String,
    pub schedule: String,
    pub engine: String,
    pub bundle_version: Option<u64>,
    pub scorer: String,
    /// The scorer's thresholds (the manifest's for MAEDAY, the bank's otherwise).
    pub thresholds: Option<Thresholds>,
    /// Where they come from: `model` or `bank`.
    pub thresholds_from: &'static str,
}

/// What a result payload is built from: one scored frame and the model that scored it.
pub struct FrameFacts<'a> {
    pub device_id: &'a str,
    pub camera: &'a str,
    pub boot: u64,
    pub seq: u64,
    pub captured: SystemTime,
    pub frame_size: [u32; 2],
    pub roi: [u32; 4],
    pub score: f32,
    /// The anomaly map over the ROI (blobs are found in it).
    pub map: &'a AnomalyMap,
    pub windows: usize,
    /// The camera's thresholds, else the model's.
    pub thresholds: Option<Thresholds>,
    pub latency: LatencyMs,
    pub model_sha256: &'a str,
    pub schedule: &'a str,
    pub scorer: String,
}

impl ResultPayload {
    /// The payload of one scored frame (`mask` is decided later, by the outputs).
    pub fn new(f: FrameFacts<'_>) -> ResultPayload {
        let t = f.thresholds;
        ResultPayload {
            device_id: f.device_id.to_string(),
            camera: f.camera.to_string(),
            boot: f.boot,
            seq: f.seq,
            captured_unix_ms: unix_ms(f.captured),
            score: f.score,
            image_threshold: t.map(|t| t.image),
            pixel_threshold: t.map(|t| t.pixel),
            anomalous: t.map(|t| f.score > t.image),
            blobs: t.map(|t| blobs(f.map, t.pixel, f.roi)).unwrap_or_default(),
            frame_size: f.frame_size,
            roi: f.roi,
            mask: false,
            latency_ms: f.latency,
            model_sha256: f.model_sha256.to_string(),
            schedule: f.schedule.to_string(),
            windows: f.windows,
            scorer: f.scorer,
            position: None,
        }
    }
}

impl ServingModel {
    /// What `detector` serves; `bundle_version` is `None` for the factory model.
    pub fn of(detector: &Detector, bundle_version: Option<u64>) -> ServingModel {
        ServingModel {
            name: detector.model.manifest.name.clone(),
            sha256: detector.model.manifest.graph_sha256.clone(),
            schedule: detector.schedule.id(),
            engine: detector.engine_description(),
            bundle_version,
            scorer: detector.scorer_description(),
            thresholds: detector.thresholds(),
            thresholds_from: match detector.scorer() {
                crate::detect::fuse::ScorerKind::Maeday => "model",
                _ => "bank",
            },
        }
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Encode any payload in the configured format.
pub fn encode<T: Serialize>(value: &T, format: PayloadFormat) -> Result<Vec<u8>> {
    Ok(match format {
        PayloadFormat::Json => serde_json::to_vec(value)?,
        PayloadFormat::Cbor => {
            let mut out = Vec::new();
            ciborium::into_writer(value, &mut out).context("CBOR encoding failed")?;
            out
        }
    })
}

/// The 8-connected regions of `map > threshold`, with boxes in frame pixels: the map covers
/// the ROI `(x, y, w, h)` of the frame.
pub fn blobs(map: &AnomalyMap, threshold: f32, roi: [u32; 4]) -> Vec<Blob> {
    let (w, h) = (map.width, map.height);
    let above: Vec<bool> = map.data.iter().map(|&v| v > threshold).collect();
    let (labels, next) = label_regions(&above, w, h, 1);
    let n = (next - 1) as usize;
    // Per region: min x, min y, max x, max y, count, peak.
    let mut acc = vec![(usize::MAX, usize::MAX, 0usize, 0usize, 0u64, f32::MIN); n];
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            if l == 0 {
                continue;
            }
            let a = &mut acc[(l - 1) as usize];
            a.0 = a.0.min(x);
            a.1 = a.1.min(y);
            a.2 = a.2.max(x);
            a.3 = a.3.max(y);
            a.4 += 1;
            a.5 = a.5.max(map.data[y * w + x]);
        }
    }
    let (sx, sy) = (roi[2] as f64 / w as f64, roi[3] as f64 / h as f64);
    let mut out: Vec<Blob> = acc
        .into_iter()
        .map(|(x0, y0, x1, y1, count, peak)| {
            let fx0 = (x0 as f64 * sx).floor() as u32;
            let fy0 = (y0 as f64 * sy).floor() as u32;
            let fx1 = (((x1 + 1) as f64 * sx).ceil() as u32).min(roi[2]);
            let fy1 = (((y1 + 1) as f64 * sy).ceil() as u32).min(roi[3]);
            Blob {
                bbox: [roi[0] + fx0, roi[1] + fy0, fx1 - fx0, fy1 - fy0],
                area_px: (count as f64 * sx * sy).round() as u32,
                peak,
            }
        })
        .collect();
    // Strongest first; a payload is bounded, so keep the 32 strongest.
    out.sort_by(|a, b| b.peak.total_cmp(&a.peak));
    out.truncate(32);
    out
}

/// PNG bytes of a grey or RGB image, with `camera`, `boot` and `seq` in tEXt chunks so a
/// mask can be matched to its result message.
pub fn png_bytes(
    pixels: &[u8],
    width: u32,
    height: u32,
    rgb: bool,
    camera: &str,
    boot: u64,
    seq: u64,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(if rgb {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    enc.add_text_chunk("maeday-camera".into(), camera.into())?;
    enc.add_text_chunk("maeday-boot".into(), boot.to_string())?;
    enc.add_text_chunk("maeday-seq".into(), seq.to_string())?;
    let mut w = enc.write_header()?;
    w.write_image_data(pixels)?;
    w.finish()?;
    Ok(out)
}

/// A mask or heatmap before encoding, so that it can be made smaller when its PNG does not
/// fit in an MQTT packet.
#[derive(Debug, Clone)]
pub enum Picture {
    /// The binary mask: 255 = anomalous.
    Mask(GrayImage),
    Heatmap(RgbImage),
}

impl Picture {
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            Picture::Mask(m) => m.dimensions(),
            Picture::Heatmap(h) => h.dimensions(),
        }
    }

    /// The PNG, named by the result's camera, boot and seq.
    pub fn png(&self, p: &ResultPayload) -> Result<Vec<u8>> {
        let (w, h) = self.dimensions();
        match self {
            Picture::Mask(m) => png_bytes(m.as_raw(), w, h, false, &p.camera, p.boot, p.seq),
            Picture::Heatmap(i) => png_bytes(i.as_raw(), w, h, true, &p.camera, p.boot, p.seq),
        }
    }

    /// Half the width and height (rounded up), or `None` below 2 x 2. A mask keeps every
    /// anomalous pixel (each output pixel is the max of its 2 x 2 block: a small defect must
    /// not vanish); a heatmap is averaged.
    pub fn halved(&self) -> Option<Picture> {
        let (w, h) = self.dimensions();
        if w < 2 && h < 2 {
            return None;
        }
        let (hw, hh) = (w.div_ceil(2), h.div_ceil(2));
        Some(match self {
            Picture::Mask(m) => Picture::Mask(GrayImage::from_fn(hw, hh, |x, y| {
                let mut v = 0u8;
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (sx, sy) = ((2 * x + dx).min(w - 1), (2 * y + dy).min(h - 1));
                    v = v.max(m.get_pixel(sx, sy)[0]);
                }
                image::Luma([v])
            })),
            Picture::Heatmap(i) => Picture::Heatmap(image::imageops::resize(
                i,
                hw,
                hh,
                image::imageops::FilterType::Triangle,
            )),
        })
    }
}

/// The binary mask of a result, at ROI resolution.
pub fn mask_picture(r: &FrameResult, threshold: f32) -> Picture {
    let p = &r.payload;
    Picture::Mask(render::binary_mask(&r.map, threshold, p.roi[2], p.roi[3]))
}

/// The heatmap overlay of a result (needs `roi_image`).
pub fn heatmap_picture(r: &FrameResult) -> Option<Picture> {
    let img = r.roi_image.as_ref()?;
    let p = &r.payload;
    let vmax = render::heatmap_scale(p.pixel_threshold, p.score);
    Some(Picture::Heatmap(render::heatmap_overlay(img, &r.map, vmax)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_found_and_scaled_to_frame_pixels() {
        // A 10x10 map over a 100x50 ROI at (20, 30): one 2x3 region and one single pixel.
        let mut map = AnomalyMap::zeros(10, 10);
        for y in 2..5 {
            for x in 4..6 {
                map.data[y * 10 + x] = 1.0;
            }
        }
        map.data[9 * 10 + 9] = 3.0;
        let b = blobs(&map, 0.5, [20, 30, 100, 50]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].peak, 3.0);
        assert_eq!(b[0].bbox, [20 + 90, 30 + 45, 10, 5]);
        assert_eq!(b[1].bbox, [20 + 40, 30 + 10, 20, 15]);
        assert_eq!(b[1].area_px, 6 * 50);
    }

    #[test]
    fn cbor_and_json_carry_the_same_fields() {
        let p = ResultPayload {
            device_id: "d".into(),
            camera: "c".into(),
            boot: 3,
            seq: 7,
            captured_unix_ms: 1_700_000_000_000,
            score: 0.5,
            // Exactly representable: JSON prints an f32 in its shortest decimal form, CBOR
            // stores the f32 bits, so 0.4 would compare as 0.4 vs 0.4000000059604645.
            image_threshold: Some(0.375),
            pixel_threshold: None,
            anomalous: Some(true),
            blobs: vec![],
            frame_size: [640, 480],
            roi: [0, 0, 640, 480],
            mask: false,
            latency_ms: LatencyMs::default(),
            model_sha256: "ab".into(),
            schedule: "random-n8".into(),
            windows: 1,
            scorer: "maeday".into(),
            position: Some(PositionStamp {
                fields: vec![("x".into(), 12.5), ("y".into(), -3.25)],
                age_ms: Some(40),
                stale: false,
            }),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode(&p, PayloadFormat::Json).unwrap()).unwrap();
        let cbor: serde_json::Value =
            ciborium::from_reader(&encode(&p, PayloadFormat::Cbor).unwrap()[..]).unwrap();
        assert_eq!(json, cbor);
        assert_eq!(json["seq"], 7);
        assert_eq!(json["anomalous"], true);
        assert_eq!(json["position"]["y"], -3.25);
        let without = ResultPayload {
            position: None,
            ..p
        };
        let json = String::from_utf8(encode(&without, PayloadFormat::Json).unwrap()).unwrap();
        assert!(
            !json.contains("position"),
            "no [position], no field: {json}"
        );
    }

    #[test]
    fn mask_png_decodes_and_names_its_frame() {
        let bytes = png_bytes(&[0, 255, 255, 0], 2, 2, false, "cam", 3, 42).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = dec.read_info().unwrap();
        let texts: Vec<(String, String)> = reader
            .info()
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        assert!(
            texts.contains(&("maeday-seq".into(), "42".into())),
            "{texts:?}"
        );
        assert!(
            texts.contains(&("maeday-boot".into(), "3".into())),
            "{texts:?}"
        );
    }

    #[test]
    fn a_halved_mask_keeps_a_single_anomalous_pixel() {
        let mut m = GrayImage::new(5, 3);
        m.put_pixel(3, 2, image::Luma([255]));
        let Some(Picture::Mask(h)) = Picture::Mask(m).halved() else {
            panic!("a 5x3 mask halves")
        };
        assert_eq!(h.dimensions(), (3, 2));
        assert_eq!(h.get_pixel(1, 1)[0], 255);
        assert_eq!(h.pixels().filter(|p| p[0] == 255).count(), 1);
        assert!(Picture::Mask(GrayImage::new(1, 1)).halved().is_none());
    }
}
