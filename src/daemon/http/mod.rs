//! The small read-only HTTP server (`[http]`; off without it, loopback in the examples):
//!
//! - `/metrics`: OpenMetrics text ([`metrics`], `prometheus-client`);
//! - `/`: the live page ([`page`]); `/frame/<i>.jpg`: camera `i`'s newest overlay
//!   ([`live`], [`overlay`]); `/api/live`: its scores and the last events ([`recent`]);
//! - `/api/status`: the retained MQTT status as JSON.
//!
//! One thread answers every request in turn (tiny_http reads them on its own threads):
//! nothing here runs on the inference thread, which only asks [`live::LiveWatch`] whether
//! to keep a frame's pixels. Only GET and HEAD, URLs up to [`MAX_URL`] bytes; no request
//! changes anything on the device, and none reads a body.

pub mod feed;
pub mod latency;
pub mod live;
pub mod metrics;
pub mod overlay;
pub mod page;
pub mod recent;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::{Config, HttpConfig};
use crate::daemon::capture::FrameSlots;
use crate::daemon::http::feed::{FeedSetup, HttpFeed};
use crate::daemon::http::live::LiveView;
use crate::daemon::http::metrics::Exposition;
use crate::daemon::http::overlay::Drawing;
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::payload::ServingModel;
use crate::daemon::stats::Stats;

/// The longest URL answered.
pub const MAX_URL: usize = 512;

/// The running server.
pub struct HttpServer {
    server: Arc<Server>,
    thread: JoinHandle<()>,
    pub addr: SocketAddr,
}

impl HttpServer {
    /// Bind `http.listen` and answer on a thread of its own.
    pub fn start(cfg: &HttpConfig, feed: Arc<HttpFeed>) -> Result<HttpServer> {
        let want = cfg.addr()?;
        let server =
            Server::http(want).map_err(|e| anyhow!("http.listen: cannot bind {want}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow!("http.listen: not an IP listener"))?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "http: listening on {addr}, not loopback: anyone who reaches it sees the \
                 frames and metrics (no login); prefer 127.0.0.1 behind a proxy"
            );
        }
        log::info!("http: live page on http://{addr}/ (metrics on /metrics)");
        let server = Arc::new(server);
        let exposition = Exposition::new(feed.clone());
        let thread = std::thread::Builder::new().name("http".into()).spawn({
            let server = server.clone();
            move || {
                for req in server.incoming_requests() {
                    answer(req, &feed, &exposition);
                }
            }
        })?;
        Ok(HttpServer {
            server,
            thread,
            addr,
        })
    }

    /// Stop answering and wait for the thread.
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

/// With `[http]`: the feed the sink thread fills and the running server. `window` is the
/// model's input size (the tiles' windows are drawn with it).
pub fn start(
    config: &Config,
    serving: ServingModel,
    window: u32,
    stats: Arc<Stats>,
    slots: Arc<FrameSlots>,
) -> Result<Option<(Arc<HttpFeed>, HttpServer)>> {
    let Some(cfg) = &config.http else {
        return Ok(None);
    };
    let names: Vec<String> = config.cameras.iter().map(|c| c.name.clone()).collect();
    let drawing = config
        .cameras
        .iter()
        .map(|c| Drawing {
            fit: c.fit(),
            window,
            max_px: cfg.frame_max_px,
            quality: cfg.jpeg_quality,
        })
        .collect();
    let feed = Arc::new(HttpFeed::new(FeedSetup {
        device_id: config.device_id.clone(),
        status: StatusPayload::online(&config.device_id, names.clone(), serving),
        live: LiveView::new(names, drawing),
        stats,
        slots,
        heatmap_output: config.output.heatmap,
        events: cfg.events,
    }));
    let server = HttpServer::start(cfg, feed.clone())?;
    Ok(Some((feed, server)))
}

type Reply = Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", content_type))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
}

fn text(status: u16, body: &str) -> Reply {
    reply(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(b) => reply(200, "application/json", b),
        Err(e) => text(500, &format!("{e}")),
    }
}

fn answer(req: Request, feed: &HttpFeed, exposition: &Exposition) {
    let response = route(req.method(), req.url(), feed, exposition);
    // A client that went away is no error of ours.
    let _ = req.respond(response);
}

/// The response to one request.
pub fn route(method: &Method, url: &str, feed: &HttpFeed, exposition: &Exposition) -> Reply {
    if !matches!(method, Method::Get | Method::Head) {
        return text(405, "only GET and HEAD").with_header(header("Allow", "GET, HEAD"));
    }
    if url.len() > MAX_URL {
        return text(414, "URL too long");
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    match path {
        "/" | "/index.html" => reply(200, "text/html; charset=utf-8", page::PAGE.into())
            .with_header(header(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'",
            )),
        "/metrics" => match exposition.render() {
            Ok(body) => reply(200, metrics::CONTENT_TYPE, body.into_bytes()),
            Err(_) => text(500, "metrics encoding failed"),
        },
        "/api/status" => json(&feed.status()),
        "/api/live" => json(&page::live(feed)),
        _ => match frame_index(path, feed.live.names().len()) {
            Some(i) => match feed.live.jpeg(i) {
                Ok(Some(jpeg)) => reply(200, "image/jpeg", jpeg.to_vec()),
                Ok(None) => text(404, "no frame yet: frames are kept while the page watches"),
                Err(e) => text(500, &format!("{e:#}")),
            },
            None => text(404, "not found"),
        },
    }
}

/// `/frame/<i>.jpg` with `i` a camera index.
fn frame_index(path: &str, cameras: usize) -> Option<usize> {
    let i: usize = path
        .strip_prefix("/frame/")?
        .strip_suffix(".jpg")?
        .parse()
        .ok()?;
    (i < cameras).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_paths_name_an_existing_camera() {
        assert_eq!(frame_index("/frame/0.jpg", 1), Some(0));
        assert_eq!(frame_index("/frame/1.jpg", 1), None);
        assert_eq!(frame_index("/frame/-1.jpg", 1), None);
        assert_eq!(frame_index("/frame/0.png", 1), None);
        assert_eq!(frame_index("/frame/99999999999999999999999.jpg", 1), None);
    }
}
