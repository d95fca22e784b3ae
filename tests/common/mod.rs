//! Helpers shared by the integration tests.

use std::fs;
use std::path::Path;

/// After editing a model folder's graph, pin the graph's new sha256 in its manifest.
pub fn repin_graph_sha(model: &Path, graph: &Path) {
    let sha = maeday_edge::manifest::sha256_file(graph).unwrap();
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
