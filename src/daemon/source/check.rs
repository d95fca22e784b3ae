//! `run --check`'s look at the sources: what [`Config::validate`] cannot know without
//! reading files.

use anyhow::{ensure, Context, Result};

use crate::config::{roi_fits, Config, SourceConfig};

/// What `run --check` adds to [`Config::validate`](crate::config::Config::validate): the checks that read the replay
/// files (their headers only). The first readable frame of each replay must be within
/// `pipeline.max_frame_pixels` and hold the camera's ROI. (At run time a frame that
/// breaks either is counted as corrupt.)
pub fn check_sources(config: &Config) -> Result<()> {
    let limits = config.pipeline.decode_limits();
    for (i, cam) in config.cameras.iter().enumerate() {
        let key = format!("camera[{i}]");
        if let SourceConfig::Gstreamer { .. } = &cam.source {
            check_gstreamer(&key, config, &cam.source)?;
            continue;
        }
        let SourceConfig::Replay { path, .. } = &cam.source else {
            continue;
        };
        if super::replay::is_video(path) {
            ensure!(
                cfg!(feature = "gstreamer"),
                "{key}.source.path: {} is a video file: this build has no GStreamer support \
                 (build with --features gstreamer)",
                path.display()
            );
            ensure!(
                path.is_file(),
                "{key}.source.path: video {} does not exist",
                path.display()
            );
            continue;
        }
        let files = super::replay::expand(path).with_context(|| format!("{key}.source.path"))?;
        // Corrupt files are skipped at run time: so here.
        let first = files
            .iter()
            .take(8)
            .find_map(|f| crate::detect::decode::dimensions(f).ok().map(|d| (f, d)));
        let Some((file, (w, h))) = first else {
            continue;
        };
        limits
            .check(w, h)
            .with_context(|| format!("{key}.source.path: {}", file.display()))?;
        if let Some(roi) = cam.roi {
            ensure!(
                roi_fits(roi, w, h),
                "{key}.roi: {roi:?} does not fit the {w}x{h} frames of {}",
                file.display()
            );
        }
    }
    Ok(())
}

/// A gstreamer camera: this build must have GStreamer, and its pipeline must build (every
/// element it names exists here: a Jetson preset on a PC is refused, naming the element).
fn check_gstreamer(key: &str, config: &Config, source: &SourceConfig) -> Result<()> {
    #[cfg(feature = "gstreamer")]
    {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        super::gstreamer::GstSource::live(source, &config.pipeline, stop)
            .with_context(|| format!("{key}.source"))?;
        Ok(())
    }
    #[cfg(not(feature = "gstreamer"))]
    {
        let _ = (config, source);
        anyhow::bail!(
            "{key}.source: kind \"gstreamer\" needs a build with GStreamer support \
             (--features gstreamer)"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MINIMAL: &str = r#"
device_id = "line-3"
[[camera]]
name = "top"
source = { kind = "replay", path = "frames" }
"#;

    #[test]
    fn check_sources_reads_the_first_frame_header_for_the_roi() {
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
        let text = |roi: &str| {
            format!(
                "device_id = \"d\"\n[[camera]]\nname = \"c\"\n\
                 source = {{ kind = \"replay\", path = \"coffee-224.png\" }}\n{roi}"
            )
        };
        let ok = Config::parse(&text("roi = [0, 0, 224, 224]"), &samples).unwrap();
        check_sources(&ok).unwrap();
        let off = Config::parse(&text("roi = [200, 0, 100, 100]"), &samples).unwrap();
        let e = format!("{:#}", check_sources(&off).unwrap_err());
        assert!(e.contains("camera[0].roi") && e.contains("224x224"), "{e}");
        let small = Config::parse(
            &format!("{}\n[pipeline]\nmax_frame_pixels = 10000\n", text("")),
            &samples,
        )
        .unwrap();
        let e = format!("{:#}", check_sources(&small).unwrap_err());
        assert!(
            e.contains("camera[0].source.path") && e.contains("224x224"),
            "{e}"
        );
        let missing = Config::parse(MINIMAL, Path::new("/nonexistent")).unwrap();
        let e = format!("{:#}", check_sources(&missing).unwrap_err());
        assert!(e.contains("camera[0].source.path"), "{e}");
    }
}
