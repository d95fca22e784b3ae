//! Helpers shared by the integration tests.

pub mod daemon;
pub mod device;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

#[allow(dead_code)]
/// After editing a model folder's graph, pin the graph's new sha256 in its manifest.
pub fn repin_graph_sha(model: &Path, graph: &Path) {
    let sha = maeday_edge::durable::sha256_file(graph).unwrap();
    let path = model.join("manifest.toml");
    let text = fs::read_to_string(&path).unwrap();
    let old = text
        .lines()
        .find(|l| l.starts_with("graph_sha256"))
        .unwrap()
        .to_string();
    fs::write(
        &path,
        text.replace(&old, &format!("graph_sha256 = \"{sha}\"")),
    )
    .unwrap();
}

/// The repository root (where `models/` and `firmware-config/` are).
#[allow(dead_code)] // each test crate compiles this module and uses a part of it
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An embedded rumqttd broker on a loopback port, accepting packets up to `max_packet`
/// bytes; returns its port. Another process can take a free port between probing and
/// binding, so a refused bind tries another port.
#[allow(dead_code)]
pub fn broker(max_packet: usize) -> u16 {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        match maeday_edge::daemon::mqtt::broker::start(addr, max_packet) {
            Ok(_) => return port,
            Err(e) => last = Some(e),
        }
    }
    panic!("no free port for the broker: {:?}", last.unwrap());
}

/// A loopback port nothing listens on right now.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
