//! The live page (`/`): one static HTML file with its script and style inline (no build
//! step, no external asset: it works on a plant network without internet). It polls
//! `/api/live` (scores, the last events) and asks `/frame/<i>.jpg` for each camera's
//! newest overlay once the previous one arrived (periodic JPEG).

use serde::Serialize;

use crate::daemon::http::feed::HttpFeed;
use crate::daemon::http::recent::RecentEvent;
use crate::daemon::payload::ResultPayload;

pub const PAGE: &str = include_str!("page.html");

/// `/api/live`.
#[derive(Serialize)]
pub struct Live {
    pub device_id: String,
    pub cameras: Vec<LiveCamera>,
    /// Newest first.
    pub events: Vec<RecentEvent>,
}

#[derive(Serialize)]
pub struct LiveCamera {
    pub name: String,
    /// The newest result (`null` before the first).
    pub latest: Option<ResultPayload>,
}

pub fn live(feed: &HttpFeed) -> Live {
    let names = feed.live.names();
    Live {
        device_id: feed.device_id.clone(),
        cameras: names
            .iter()
            .zip(feed.live.latest())
            .map(|(name, latest)| LiveCamera {
                name: name.clone(),
                latest,
            })
            .collect(),
        events: feed.recent(),
    }
}
