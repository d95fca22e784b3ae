//! The small read-only HTTP server (`[http]`; off without it, loopback in the examples):
//!
//! - `/metrics`: OpenMetrics text ([`metrics`], `prometheus-client`);
//! - `/`: the live page ([`page`]); `/frame/<i>.jpg`: camera `i`'s newest overlay
//!   ([`live`], [`overlay`]); `/api/live`: its scores and the last events ([`recent`]);
//! - `/api/status`: the retained MQTT status as JSON.
//!
//! One thread accepts; [`WORKERS`] threads answer, one connection each at a time
//! ([`conn`]: bounded head, timeouts, no body, no keep-alive); at most [`MAX_WAITING`]
//! connections wait for a worker, more are closed at once. Nothing here runs on the
//! inference thread, which only asks [`live::LiveWatch`] whether to keep a frame's
//! pixels. Only GET and HEAD, URLs up to [`MAX_URL`] bytes; no request changes anything
//! on the device.

pub mod conn;
pub mod feed;
pub mod latency;
pub mod live;
pub mod metrics;
pub mod overlay;
pub mod page;
pub mod recent;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::config::{Config, HttpConfig};
use crate::daemon::capture::FrameSlots;
use crate::daemon::http::conn::{Head, Reply};
use crate::daemon::http::feed::{FeedSetup, HttpFeed};
use crate::daemon::http::live::LiveView;
use crate::daemon::http::metrics::Exposition;
use crate::daemon::http::overlay::Drawing;
use crate::daemon::outputs::status::StatusPayload;
use crate::daemon::payload::ServingModel;
use crate::daemon::stats::Stats;

/// The longest URL answered.
pub const MAX_URL: usize = 512;
/// Threads answering requests.
pub const WORKERS: usize = 2;
/// Connections accepted and waiting for a worker; more are closed at once.
pub const MAX_WAITING: usize = 16;

/// The running server.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl HttpServer {
    /// Bind `http.listen` and answer on threads of its own.
    pub fn start(cfg: &HttpConfig, feed: Arc<HttpFeed>) -> Result<HttpServer> {
        let want = cfg.addr()?;
        let listener =
            TcpListener::bind(want).with_context(|| format!("http.listen: cannot bind {want}"))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "http: listening on {addr}, not loopback: anyone who reaches it sees the \
                 frames and metrics (no login); prefer 127.0.0.1 behind a proxy"
            );
        }
        log::info!("http: live page on http://{addr}/ (metrics on /metrics)");
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<TcpStream>(MAX_WAITING);
        let rx = Arc::new(Mutex::new(rx));
        let exposition = Arc::new(Exposition::new(feed.clone()));
        let mut threads = Vec::new();
        for i in 0..WORKERS {
            let (rx, feed, exposition) = (rx.clone(), feed.clone(), exposition.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || work(&rx, &feed, &exposition))?,
            );
        }
        let accept_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept(listener, tx, &accept_stop))?,
        );
        Ok(HttpServer {
            stop,
            threads,
            addr,
        })
    }

    /// Stop accepting, let the workers finish, wait for the threads.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, std::time::Duration::from_secs(1));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Hand connections to the workers; close those that find no room.
fn accept(listener: TcpListener, tx: SyncSender<TcpStream>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok(s) = stream {
            // Full: dropped (closed) at once, so a flood holds no thread and no memory.
            let _ = tx.try_send(s);
        }
    }
}

fn work(rx: &Mutex<Receiver<TcpStream>>, feed: &HttpFeed, exposition: &Exposition) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(mut stream) = next else {
            return;
        };
        let (reply, head_only) = match conn::read_head(&mut stream) {
            Ok(head) => (route(&head, feed, exposition), head.method == "HEAD"),
            Err(status) => (text(status, "bad request"), false),
        };
        // A client that went away is no error of ours.
        let _ = conn::write(&mut stream, &reply, head_only);
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
        status: StatusPayload::online(
            &config.device_id,
            names.clone(),
            serving,
            config.output.format,
        ),
        live: LiveView::new(names, drawing),
        stats,
        slots,
        heatmap_output: config.output.heatmap,
        events: cfg.events,
        from_events: config.events.is_some(),
    }));
    let server = HttpServer::start(cfg, feed.clone())?;
    Ok(Some((feed, server)))
}

fn text(status: u16, body: &str) -> Reply {
    Reply::new(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(b) => Reply::new(200, "application/json", b),
        Err(e) => text(500, &format!("{e}")),
    }
}

const PAGE_POLICY: &str =
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'";

/// The response to one request.
pub fn route(head: &Head, feed: &HttpFeed, exposition: &Exposition) -> Reply {
    if !matches!(head.method.as_str(), "GET" | "HEAD") {
        return text(405, "only GET and HEAD").with("Allow", "GET, HEAD");
    }
    if head.path.len() > MAX_URL {
        return text(414, "URL too long");
    }
    let path = head.path.split(['?', '#']).next().unwrap_or("");
    match path {
        "/" | "/index.html" => Reply::new(200, "text/html; charset=utf-8", page::PAGE.into())
            .with("Content-Security-Policy", PAGE_POLICY),
        "/metrics" => match exposition.render() {
            Ok(body) => Reply::new(200, metrics::CONTENT_TYPE, body.into_bytes()),
            Err(_) => text(500, "metrics encoding failed"),
        },
        "/api/status" => json(&feed.status()),
        "/api/live" => json(&page::live(feed)),
        _ => match frame_index(path, feed.live.names().len()) {
            Some(i) => match feed.live.jpeg(i) {
                Ok(Some(jpeg)) => Reply::new(200, "image/jpeg", jpeg.to_vec()),
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
