//! The MQTT packet limit on the way out: what a message costs on the wire, and how a
//! result or picture is made to fit under `mqtt.max_packet_bytes`.
//!
//! rumqttc refuses to write a packet over its outgoing limit by failing the whole
//! connection; the message then goes back to the head of the spool and fails the next
//! connection the same way, forever. So every message is measured before it is queued or
//! spooled: a picture (mask, heatmap) is halved until its PNG fits, a result sheds its
//! weakest blobs (its score always goes out), and what still cannot fit is dropped and
//! counted, never handed to the client.

use anyhow::Result;

use crate::config::PayloadFormat;
use crate::daemon::payload::{self, Picture, ResultPayload};

/// Bytes of a QoS 1 PUBLISH of `payload` bytes on `topic`, as rumqttc counts them against
/// its limit: the fixed header (1 byte + the remaining length, 1 to 4 bytes), the topic
/// (2-byte length + UTF-8), the packet id (2) and the payload.
pub fn publish_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

pub fn fits(topic: &str, payload: usize, max_packet: usize) -> bool {
    publish_bytes(topic, payload) <= max_packet
}

/// How a picture went out.
#[derive(Debug)]
pub enum Fitted {
    /// At full size.
    AsIs(Vec<u8>),
    /// Made smaller to fit: the PNG, its size, and the full-size PNG's length.
    Shrunk {
        png: Vec<u8>,
        size: (u32, u32),
        full_bytes: usize,
    },
    /// Not even a tiny version fits (a topic near the limit): the full-size PNG's length.
    TooLarge { full_bytes: usize },
}

/// The picture's PNG (`full`: already encoded at full size), halved until it fits.
pub fn fit_picture(
    picture: &Picture,
    full: Option<Vec<u8>>,
    p: &ResultPayload,
    topic: &str,
    max_packet: usize,
) -> Result<Fitted> {
    let full = match full {
        Some(png) => png,
        None => picture.png(p)?,
    };
    if fits(topic, full.len(), max_packet) {
        return Ok(Fitted::AsIs(full));
    }
    let full_bytes = full.len();
    let mut smaller = picture.halved();
    while let Some(pic) = smaller {
        let png = pic.png(p)?;
        if fits(topic, png.len(), max_packet) {
            return Ok(Fitted::Shrunk {
                png,
                size: pic.dimensions(),
                full_bytes,
            });
        }
        smaller = pic.halved();
    }
    Ok(Fitted::TooLarge { full_bytes })
}

/// The encoded result, without its weakest blobs if it must (blobs are strongest first):
/// `(bytes, blobs left out)`, or `None` when even no blobs at all do not fit.
pub fn fit_result(
    p: &ResultPayload,
    format: PayloadFormat,
    topic: &str,
    max_packet: usize,
) -> Result<Option<(Vec<u8>, usize)>> {
    let bytes = payload::encode(p, format)?;
    if fits(topic, bytes.len(), max_packet) {
        return Ok(Some((bytes, 0)));
    }
    let mut fewer = p.clone();
    while fewer.blobs.pop().is_some() {
        let bytes = payload::encode(&fewer, format)?;
        if fits(topic, bytes.len(), max_packet) {
            return Ok(Some((bytes, p.blobs.len() - fewer.blobs.len())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::payload::{Blob, LatencyMs};
    use image::{GrayImage, RgbImage};

    /// The size rumqttc itself computes for the packet, and refuses above its limit.
    fn rumqttc_size(topic: &str, payload: usize) -> usize {
        let mut p = rumqttc::Publish::new(topic, rumqttc::QoS::AtLeastOnce, vec![0u8; payload]);
        p.pkid = 1;
        p.size()
    }

    #[test]
    fn packet_size_matches_rumqttc_at_every_length_boundary() {
        for topic in ["t", "maeday/line-3/belt/heatmap"] {
            for payload in [
                0, 1, 100, 122, 123, 124, 16_350, 16_360, 16_400, 2_097_100, 2_097_200,
            ] {
                assert_eq!(
                    publish_bytes(topic, payload),
                    rumqttc_size(topic, payload),
                    "{topic} {payload}"
                );
            }
        }
    }

    fn payload(blobs: usize) -> ResultPayload {
        ResultPayload {
            device_id: "d".into(),
            camera: "belt".into(),
            boot: 1,
            seq: 1,
            captured_unix_ms: 0,
            score: 2.5,
            image_threshold: Some(1.0),
            pixel_threshold: Some(2.0),
            anomalous: Some(true),
            blobs: (0..blobs)
                .map(|i| Blob {
                    bbox: [1000 + i as u32, 2000, 300, 400],
                    area_px: 123_456,
                    peak: 3.0 - i as f32 * 0.01,
                })
                .collect(),
            frame_size: [1920, 1080],
            roi: [0, 0, 1920, 1080],
            mask: false,
            latency_ms: LatencyMs::default(),
            model_sha256: "ab".repeat(32),
            schedule: "random-n32".into(),
            windows: 1,
            scorer: "maeday".into(),
            position: None,
        }
    }

    #[test]
    fn a_result_sheds_its_weakest_blobs_but_keeps_its_score() {
        let p = payload(32);
        let topic = "maeday/d/belt/result";
        let full = payload::encode(&p, PayloadFormat::Json).unwrap();
        assert!(full.len() > 1024, "{}", full.len());
        let (bytes, left_out) = fit_result(&p, PayloadFormat::Json, topic, 1024)
            .unwrap()
            .unwrap();
        assert!(publish_bytes(topic, bytes.len()) <= 1024);
        assert!(left_out > 0 && left_out < 32, "{left_out}");
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["score"], 2.5);
        // The strongest blobs stay.
        assert_eq!(v["blobs"][0]["bbox"][0], 1000);
        assert!(fit_result(&p, PayloadFormat::Json, &"t".repeat(2000), 1024)
            .unwrap()
            .is_none());
        let (same, 0) = fit_result(&p, PayloadFormat::Cbor, topic, 1 << 20)
            .unwrap()
            .unwrap()
        else {
            panic!("fits at 1 MiB")
        };
        assert_eq!(same, payload::encode(&p, PayloadFormat::Cbor).unwrap());
    }

    #[test]
    fn a_picture_is_halved_until_it_fits() {
        // Noise does not compress: 256 x 256 RGB is ~200 KB as PNG.
        let mut state = 1u32;
        let noise = RgbImage::from_fn(256, 256, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([(state >> 24) as u8, (state >> 16) as u8, (state >> 8) as u8])
        });
        let pic = Picture::Heatmap(noise);
        let p = payload(0);
        let topic = "maeday/d/belt/heatmap";
        let Fitted::Shrunk {
            png,
            size,
            full_bytes,
        } = fit_picture(&pic, None, &p, topic, 20_000).unwrap()
        else {
            panic!("shrunk")
        };
        assert!(full_bytes > 150_000, "{full_bytes}");
        assert!(publish_bytes(topic, png.len()) <= 20_000);
        assert!(size.0 < 256 && size.0 >= 32, "{size:?}");
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), size);
        let mask = Picture::Mask(GrayImage::new(64, 64));
        assert!(matches!(
            fit_picture(&mask, None, &p, topic, 20_000).unwrap(),
            Fitted::AsIs(_)
        ));
        assert!(matches!(
            fit_picture(&mask, None, &p, &"t".repeat(1100), 1024).unwrap(),
            Fitted::TooLarge { .. }
        ));
    }
}
