//! `[http]`: the small read-only HTTP server (`/metrics`, the live page `/`, `/api/status`).
//! Off without the section; `listen` is required in it, so nothing listens unless a site
//! asks, and the documented example is loopback (a non-loopback address is allowed but
//! logged loudly at start: the server has no login).

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:8080` (port 0: any free port).
    pub listen: String,
    /// The longest side of the live page's overlay JPEG, in pixels.
    #[serde(default = "default_frame_max_px")]
    pub frame_max_px: u32,
    /// JPEG quality of the live page's frames (1..100).
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: u8,
    /// How many recent events (anomaly events with `[events]`, else anomalous frames) the
    /// page lists.
    #[serde(default = "default_events")]
    pub events: usize,
}

pub(super) const FRAME_PX: std::ops::RangeInclusive<u32> = 64..=4096;
const EVENTS: std::ops::RangeInclusive<usize> = 1..=256;

fn default_frame_max_px() -> u32 {
    960
}

fn default_jpeg_quality() -> u8 {
    80
}

fn default_events() -> usize {
    20
}

impl HttpConfig {
    /// The address to bind.
    pub fn addr(&self) -> Result<SocketAddr> {
        self.listen.parse().with_context(|| {
            format!(
                "http.listen: {:?} is not an address:port (e.g. \"127.0.0.1:8080\")",
                self.listen
            )
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.addr()?;
        ensure!(
            FRAME_PX.contains(&self.frame_max_px),
            "http.frame_max_px: must be {} to {} (got {})",
            FRAME_PX.start(),
            FRAME_PX.end(),
            self.frame_max_px
        );
        ensure!(
            (1..=100).contains(&self.jpeg_quality),
            "http.jpeg_quality: must be 1 to 100 (got {})",
            self.jpeg_quality
        );
        ensure!(
            EVENTS.contains(&self.events),
            "http.events: must be {} to {} (got {})",
            EVENTS.start(),
            EVENTS.end(),
            self.events
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HttpConfig> {
        let c: HttpConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults_and_errors_that_name_the_key() {
        let c = parse("listen = \"127.0.0.1:8080\"").unwrap();
        assert_eq!((c.frame_max_px, c.jpeg_quality, c.events), (960, 80, 20));
        assert!(c.addr().unwrap().ip().is_loopback());
        for (text, key) in [
            ("listen = \"localhost\"", "http.listen"),
            ("listen = \"\"", "http.listen"),
            (
                "listen = \"1.2.3.4:0\"\nframe_max_px = 10",
                "http.frame_max_px",
            ),
            (
                "listen = \"[::1]:0\"\njpeg_quality = 0",
                "http.jpeg_quality",
            ),
            ("listen = \"[::1]:0\"\nevents = 100000", "http.events"),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.starts_with(key), "{text}: {e}");
        }
        assert!(parse("listen = \"127.0.0.1:1\"\nport = 3").is_err());
        assert!(parse("jpeg_quality = 50").is_err(), "listen is required");
    }
}
