//! Building a GStreamer source's pipeline and turning its samples into RGB frames.
//!
//! A pipeline ends in an appsink whose caps are `video/x-raw` RGB (or GRAY8) at the
//! camera's size: for a URL or a file the decode and conversion are ours
//! (`... ! decodebin ! videoconvert ! videoscale ! [videorate !] capsfilter ! appsink`); an
//! operator's pipeline that ends in an appsink gets those caps on its appsink, any other
//! gets the conversion appended. Everything the stream hands over is checked before it is
//! read: the decoded size against `pipeline.max_frame_pixels` (a probe on the converter's
//! input refuses a stream whose caps are over it, before a frame of it is converted), and
//! each sample's caps and buffer size before the buffer is mapped.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use image::RgbImage;

/// Where a GStreamer source's frames come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// `rtsp://` / `rtsps://`: rtspsrc over TCP (a dropped connection is seen at once).
    Rtsp(String),
    /// Any other URI (`http(s)://`, `file://`): uridecodebin.
    Uri(String),
    /// A video file (MP4/MKV/...): filesrc ! decodebin.
    File(PathBuf),
    /// A gst-launch description from the config.
    Launch(String),
}

impl Origin {
    /// A `url` key: a URI (`scheme://`) or a file path.
    pub fn from_url(url: &str) -> Origin {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("rtsp://") || lower.starts_with("rtsps://") {
            Origin::Rtsp(url.to_string())
        } else if url.contains("://") {
            Origin::Uri(url.to_string())
        } else {
            Origin::File(PathBuf::from(url))
        }
    }
}

/// What the appsink is to deliver.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Scale to this size; None: as decoded.
    pub size: Option<(u32, u32)>,
    pub gray: bool,
    /// A videorate to this rate (frames per second); None: as the stream delivers.
    pub fps: Option<f64>,
    /// `pipeline.max_frame_pixels`: no larger frame is converted or read.
    pub max_pixels: u64,
    /// RTSP jitter buffer in ms.
    pub latency_ms: u32,
}

/// A built pipeline (not started).
pub struct Built {
    pub pipeline: gst::Pipeline,
    pub sink: gst_app::AppSink,
}

/// Make sure GStreamer is initialised (once per process; later calls are cheap).
pub fn init() -> Result<()> {
    gst::init().context("cannot initialise GStreamer")
}

/// The appsink caps of `out`.
pub fn caps(out: &Output) -> gst::Caps {
    let format = if out.gray {
        gst_video::VideoFormat::Gray8
    } else {
        gst_video::VideoFormat::Rgb
    };
    let mut b = gst_video::VideoCapsBuilder::new().format(format);
    if let Some((w, h)) = out.size {
        b = b.width(w as i32).height(h as i32);
    }
    if let Some(fps) = out.fps {
        if let Some(f) = gst::Fraction::approximate_f64(fps) {
            b = b.framerate(f);
        }
    }
    b.build()
}

/// The conversion tail every non-appsink pipeline ends with.
fn tail(out: &Output) -> String {
    let rate = if out.fps.is_some() {
        " ! videorate drop-only=true"
    } else {
        ""
    };
    format!("videoconvert name=maeday_conv ! videoscale{rate} ! capsfilter name=maeday_caps ! appsink name=maeday_sink")
}

/// Build (not start) the pipeline of `origin`. `live`: newest frame wins at the appsink
/// (one buffer, older ones dropped); otherwise every frame is kept (replays).
pub fn build(origin: &Origin, out: &Output, live: bool) -> Result<Built> {
    init()?;
    let description = match origin {
        Origin::Rtsp(_) => format!("rtspsrc name=maeday_src ! decodebin ! {}", tail(out)),
        Origin::Uri(_) => format!("uridecodebin name=maeday_src ! {}", tail(out)),
        Origin::File(_) => format!("filesrc name=maeday_src ! decodebin ! {}", tail(out)),
        // An operator's pipeline without an appsink gets the conversion appended (parsed
        // whole: a description may end in caps, which only link to a next element).
        Origin::Launch(d) if d.contains("appsink") => d.clone(),
        Origin::Launch(d) => format!("{d} ! {}", tail(out)),
    };
    let element = gst::parse::launch(&description)
        .with_context(|| format!("cannot build the GStreamer pipeline {description:?}"))?;
    let sink = find_appsink(&element).context("the pipeline has no appsink")?;
    let pipeline = match element.downcast::<gst::Pipeline>() {
        Ok(p) => p,
        Err(_) => bail!("the description is one element, not a pipeline ending in an appsink"),
    };
    if let Some(src) = pipeline.by_name("maeday_src") {
        match origin {
            Origin::Rtsp(url) => {
                src.set_property("location", url);
                src.set_property("latency", out.latency_ms);
                src.set_property_from_str("protocols", "tcp");
            }
            Origin::Uri(uri) => src.set_property("uri", uri),
            Origin::File(path) => src.set_property("location", path.to_string_lossy().as_ref()),
            Origin::Launch(_) => {}
        }
    }
    let caps = caps(out);
    match pipeline.by_name("maeday_caps") {
        Some(filter) => filter.set_property("caps", &caps),
        None => sink.set_caps(Some(&caps)),
    }
    if let Some(conv) = pipeline.by_name("maeday_conv") {
        refuse_oversized_input(&conv, out.max_pixels)?;
    }
    sink.set_property("sync", false);
    sink.set_property("enable-last-sample", false);
    if live {
        sink.set_max_buffers(1);
        sink.set_drop(true);
    } else {
        sink.set_max_buffers(4);
        sink.set_drop(false);
    }
    Ok(Built { pipeline, sink })
}

fn find_appsink(element: &gst::Element) -> Option<gst_app::AppSink> {
    if let Some(sink) = element.downcast_ref::<gst_app::AppSink>() {
        return Some(sink.clone());
    }
    let bin = element.downcast_ref::<gst::Bin>()?;
    bin.iterate_recurse()
        .into_iter()
        .flatten()
        .find_map(|e| e.downcast::<gst_app::AppSink>().ok())
}

/// A decoded stream over `max_pixels` is refused at the converter's input, from its caps,
/// before any frame of it is converted: the pipeline posts an error (the source counts it
/// and reconnects).
fn refuse_oversized_input(conv: &gst::Element, max_pixels: u64) -> Result<()> {
    let pad = conv
        .static_pad("sink")
        .context("videoconvert has no sink pad")?;
    let weak = conv.downgrade();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(ev)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let gst::EventView::Caps(c) = ev.view() else {
            return gst::PadProbeReturn::Ok;
        };
        let Some((w, h)) = caps_size(c.caps()) else {
            return gst::PadProbeReturn::Ok;
        };
        if w as u64 * h as u64 <= max_pixels {
            return gst::PadProbeReturn::Ok;
        }
        if let Some(conv) = weak.upgrade() {
            gst::element_error!(
                conv,
                gst::StreamError::Format,
                (
                    "decoded stream is {}x{}, over pipeline.max_frame_pixels ({})",
                    w,
                    h,
                    max_pixels
                )
            );
        }
        gst::PadProbeReturn::Drop
    })
    .context("cannot watch the converter's caps")?;
    Ok(())
}

fn caps_size(caps: &gst::CapsRef) -> Option<(u32, u32)> {
    let s = caps.structure(0)?;
    let w = s.get::<i32>("width").ok()?;
    let h = s.get::<i32>("height").ok()?;
    Some((w.max(0) as u32, h.max(0) as u32))
}

/// One appsink sample to an RGB frame: the caps are checked (size within `max_pixels`,
/// the configured size if any, RGB or GRAY8) and the buffer's size against them before it
/// is mapped; a sample that fails any check is an error (a corrupt frame).
pub fn to_rgb(sample: &gst::Sample, out: &Output) -> Result<RgbImage> {
    let caps = sample.caps().context("a sample without caps")?;
    let info = gst_video::VideoInfo::from_caps(caps)
        .with_context(|| format!("caps that are not raw video: {caps}"))?;
    let (w, h) = (info.width(), info.height());
    ensure!(w > 0 && h > 0, "an empty {w}x{h} frame");
    ensure!(
        w as u64 * h as u64 <= out.max_pixels,
        "a {w}x{h} frame is over pipeline.max_frame_pixels ({})",
        out.max_pixels
    );
    if let Some((cw, ch)) = out.size {
        ensure!(
            (w, h) == (cw, ch),
            "a {w}x{h} frame, the source was negotiated at {cw}x{ch}"
        );
    }
    let channels = match info.format() {
        gst_video::VideoFormat::Rgb => 3usize,
        gst_video::VideoFormat::Gray8 => 1,
        other => bail!("a {other:?} frame (RGB or GRAY8 expected)"),
    };
    let buffer = sample.buffer().context("a sample without a buffer")?;
    ensure!(
        buffer.size() >= info.size(),
        "a {} byte buffer, a {w}x{h} {:?} frame needs {}",
        buffer.size(),
        info.format(),
        info.size()
    );
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|_| anyhow::anyhow!("cannot map a {w}x{h} frame's buffer"))?;
    let stride = usize::try_from(frame.plane_stride()[0]).context("a negative stride")?;
    let data = frame.plane_data(0).context("no plane 0")?;
    let row = w as usize * channels;
    ensure!(
        stride >= row && data.len() >= stride * (h as usize - 1) + row,
        "a {} byte plane with stride {stride} is short for {w}x{h}",
        data.len()
    );
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        let line = &data[y * stride..y * stride + row];
        if channels == 3 {
            rgb.extend_from_slice(line);
        } else {
            rgb.extend(line.iter().flat_map(|&g| [g, g, g]));
        }
    }
    RgbImage::from_raw(w, h, rgb).context("frame buffer size")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(size: Option<(u32, u32)>) -> Output {
        Output {
            size,
            gray: false,
            fps: None,
            max_pixels: 100_000,
            latency_ms: 0,
        }
    }

    fn sample(w: u32, h: u32, format: gst_video::VideoFormat, bytes: usize) -> gst::Sample {
        init().unwrap();
        let info = gst_video::VideoInfo::builder(format, w, h).build().unwrap();
        let caps = info.to_caps().unwrap();
        let buffer = gst::Buffer::from_mut_slice(vec![7u8; bytes]);
        gst::Sample::builder().caps(&caps).buffer(&buffer).build()
    }

    #[test]
    fn samples_are_checked_before_they_are_read() {
        use gst_video::VideoFormat::{Gray8, Rgb, Rgba};
        // 30x20 RGB: rows padded to a stride of 92 bytes.
        let ok = to_rgb(&sample(30, 20, Rgb, 92 * 20), &out(Some((30, 20)))).unwrap();
        assert_eq!(ok.dimensions(), (30, 20));
        let gray = to_rgb(&sample(30, 20, Gray8, 32 * 20), &out(None)).unwrap();
        assert_eq!(gray.get_pixel(3, 3).0, [7, 7, 7]);
        // A short buffer, another size than negotiated, over the limit, another format.
        let e = format!(
            "{:#}",
            to_rgb(&sample(30, 20, Rgb, 100), &out(None)).unwrap_err()
        );
        assert!(e.contains("100 byte buffer"), "{e}");
        assert!(to_rgb(&sample(30, 20, Rgb, 92 * 20), &out(Some((32, 20)))).is_err());
        let e = format!(
            "{:#}",
            to_rgb(&sample(400, 400, Rgb, 1200 * 400), &out(None)).unwrap_err()
        );
        assert!(e.contains("max_frame_pixels"), "{e}");
        assert!(to_rgb(&sample(30, 20, Rgba, 120 * 20), &out(None)).is_err());
    }

    #[test]
    fn pipelines_end_in_our_appsink_with_our_caps() {
        let o = Output {
            size: Some((64, 48)),
            gray: true,
            fps: Some(5.0),
            max_pixels: 100_000,
            latency_ms: 0,
        };
        let b = build(
            &Origin::Launch("videotestsrc num-buffers=2".into()),
            &o,
            true,
        )
        .unwrap();
        assert!(b.pipeline.by_name("maeday_caps").is_some());
        let c = caps(&o).to_string();
        assert!(
            c.contains("GRAY8") && c.contains("64") && c.contains("5/1"),
            "{c}"
        );
        // An operator's appsink gets the caps itself.
        let b = build(
            &Origin::Launch("videotestsrc ! videoconvert ! appsink name=mine".into()),
            &o,
            false,
        )
        .unwrap();
        assert_eq!(b.sink.name(), "mine");
        assert!(b.sink.caps().is_some());
        assert!(build(&Origin::Launch("nosuchelement ! appsink".into()), &o, true).is_err());
        assert!(matches!(Origin::from_url("RTSP://cam/1"), Origin::Rtsp(_)));
        assert!(matches!(Origin::from_url("clip.mp4"), Origin::File(_)));
        assert!(matches!(Origin::from_url("file:///a.mkv"), Origin::Uri(_)));
    }
}
