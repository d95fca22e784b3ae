//! Test helper for tests/gstreamer.rs and benches/gstreamer.rs (feature `gstreamer`; not
//! part of the daemon):
//!
//! - `serve PORT`: an RTSP server on 127.0.0.1:PORT serving `/belt`, a live H.264 test
//!   pattern (320x240, 10 fps); prints `ready` once listening. A separate process so a test
//!   can kill it mid-run and start it again on the same port.
//! - `encode GIF OUT.mp4 [WIDTHxHEIGHT]`: a GIF's frames (the conveyor clip) encoded to
//!   H.264 in an MP4 at 10 fps, optionally scaled, for the video-replay tests and the bench.

use std::io::Write;

use anyhow::{bail, Context, Result};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use gstreamer_rtsp_server::prelude::*;
use image::AnimationDecoder;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    gst::init()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port] => serve(port.parse().context("port")?),
        ["encode", gif, out] => encode(gif, out, None),
        ["encode", gif, out, size] => {
            let (w, h) = size.split_once('x').context("WIDTHxHEIGHT")?;
            encode(gif, out, Some((w.parse()?, h.parse()?)))
        }
        _ => bail!("usage: serve PORT | encode GIF OUT.mp4 [WIDTHxHEIGHT]"),
    }
}

fn serve(port: u16) -> Result<()> {
    let main_loop = gst::glib::MainLoop::new(None, false);
    let server = rtsp::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let mounts = server.mount_points().context("no mount points")?;
    let factory = rtsp::RTSPMediaFactory::new();
    factory.set_launch(
        "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=10/1 \
         ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=5 \
         ! rtph264pay name=pay0 pt=96 config-interval=1 )",
    );
    factory.set_shared(true);
    mounts.add_factory("/belt", factory);
    let _id = server.attach(None).context("cannot listen")?;
    println!("ready");
    std::io::stdout().flush()?;
    main_loop.run();
    Ok(())
}

fn encode(gif: &str, out: &str, size: Option<(u32, u32)>) -> Result<()> {
    let file = std::io::BufReader::new(std::fs::File::open(gif).context("open the GIF")?);
    let frames = image::codecs::gif::GifDecoder::new(file)?
        .into_frames()
        .collect_frames()?;
    let first = frames.first().context("no frames")?.buffer();
    let (w, h) = first.dimensions();
    let scale = size
        .map(|(sw, sh)| format!("videoscale ! video/x-raw,width={sw},height={sh} ! "))
        .unwrap_or_default();
    let description = format!(
        "appsrc name=src format=time ! videoconvert ! {scale}x264enc speed-preset=ultrafast \
         key-int-max=10 ! video/x-h264,profile=high ! h264parse ! mp4mux ! filesink name=sink"
    );
    let pipeline = gst::parse::launch(&description)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    pipeline
        .by_name("sink")
        .context("sink")?
        .set_property("location", out);
    let src = pipeline
        .by_name("src")
        .context("src")?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| anyhow::anyhow!("not an appsrc"))?;
    src.set_caps(Some(
        &gstreamer_video::VideoCapsBuilder::new()
            .format(gstreamer_video::VideoFormat::Rgba)
            .width(w as i32)
            .height(h as i32)
            .framerate(gst::Fraction::new(10, 1))
            .build(),
    ));
    pipeline.set_state(gst::State::Playing)?;
    for (i, f) in frames.iter().enumerate() {
        let mut buffer = gst::Buffer::from_mut_slice(f.buffer().as_raw().clone());
        let b = buffer.get_mut().context("buffer")?;
        b.set_pts(gst::ClockTime::from_mseconds(100 * i as u64));
        b.set_duration(gst::ClockTime::from_mseconds(100));
        src.push_buffer(buffer)?;
    }
    src.end_of_stream()?;
    let bus = pipeline.bus().context("bus")?;
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => bail!("encode: {}", e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null)?;
    println!("{} frames", frames.len());
    Ok(())
}
