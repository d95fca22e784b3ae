//! One operator request, read from the JSON on the command topic:
//! `{"id": "r1", "command": "pause", "camera": "belt"}`.
//!
//! Everything here came from the broker: the request is at most
//! `update::command::MAX_COMMAND_BYTES`, read key by key (unknown keys are errors), and
//! the errors name only keys and values this code knows, so a reply never echoes
//! arbitrary input. An id is 1 to [`MAX_ID_CHARS`] characters of `[A-Za-z0-9._:-]`; a
//! camera is echoed only once it names a configured camera.

use serde::Serialize;
use serde_json::{Map, Value};

/// The longest request id echoed in a reply.
pub const MAX_ID_CHARS: usize = 64;

/// The largest threshold accepted (scores are squared errors or standardised values,
/// far below this; the bound keeps every value printable and comparable).
pub const MAX_THRESHOLD: f64 = 1e6;

/// A request id: bounded and of a safe charset, so it can be echoed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RequestId(String);

impl RequestId {
    /// The id if it is 1..=64 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(s: &str) -> Option<RequestId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        ok.then(|| RequestId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the thresholds change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdChange {
    /// Set the image and/or pixel threshold (at least one).
    Set {
        image: Option<f32>,
        pixel: Option<f32>,
    },
    /// Back to the config's or the model's.
    Reset,
}

/// What a request asks for. Cameras are indexes into the config's cameras.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Pause {
        camera: usize,
    },
    Resume {
        camera: usize,
    },
    /// One camera, or every camera (`camera` absent).
    Thresholds {
        camera: Option<usize>,
        change: ThresholdChange,
    },
    Trigger {
        camera: usize,
    },
    Snapshot {
        camera: usize,
    },
    Metrics,
}

/// The commands a JSON request may name.
pub const COMMANDS: [&str; 6] = [
    "pause",
    "resume",
    "thresholds",
    "trigger",
    "snapshot",
    "metrics",
];

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Pause { .. } => "pause",
            Action::Resume { .. } => "resume",
            Action::Thresholds { .. } => "thresholds",
            Action::Trigger { .. } => "trigger",
            Action::Snapshot { .. } => "snapshot",
            Action::Metrics => "metrics",
        }
    }

    /// Whether it changes what the device reports (then it must be signed, unless
    /// `commands.allow_unsigned`): pause hides a camera, thresholds decide what is
    /// anomalous. Trigger, snapshot and metrics only read.
    pub fn changes_reports(&self) -> bool {
        matches!(
            self,
            Action::Pause { .. } | Action::Resume { .. } | Action::Thresholds { .. }
        )
    }
}

/// A request that was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: RequestId,
    pub action: Action,
}

/// A request that could not be read: what its reply can say (the id and command only
/// when they were valid).
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub id: Option<RequestId>,
    pub command: Option<&'static str>,
    pub error: String,
}

/// Whether `payload` is a JSON request object rather than a signed command envelope
/// (which has a `sig`) or plain text.
pub fn is_request(v: &Value) -> bool {
    v.as_object().is_some_and(|o| !o.contains_key("sig"))
}

/// Read a request from its JSON text; `cameras` are the configured camera names.
pub fn parse(text: &str, cameras: &[String]) -> Result<Request, Malformed> {
    let bad = |error: &str| Malformed {
        id: None,
        command: None,
        error: error.to_string(),
    };
    let value: Value = serde_json::from_str(text).map_err(|_| bad("not a JSON object"))?;
    let Some(obj) = value.as_object() else {
        return Err(bad("not a JSON object"));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) => RequestId::parse(s),
        _ => None,
    };
    let command = match obj.get("command") {
        Some(Value::String(s)) => COMMANDS.iter().copied().find(|c| c == s),
        _ => None,
    };
    let fail = |error: String| Malformed {
        id: id.clone(),
        command,
        error,
    };
    let Some(id) = id.clone() else {
        return Err(fail(format!(
            "id: required, 1 to {MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : -"
        )));
    };
    let Some(command) = command else {
        return Err(fail(format!(
            "command: must be one of {}",
            COMMANDS.join(", ")
        )));
    };
    let action = read_action(command, obj, cameras).map_err(fail)?;
    Ok(Request { id, action })
}

fn read_action(
    command: &'static str,
    obj: &Map<String, Value>,
    cameras: &[String],
) -> Result<Action, String> {
    let allowed: &[&str] = match command {
        "thresholds" => &["id", "command", "camera", "image", "pixel", "reset"],
        "metrics" => &["id", "command"],
        _ => &["id", "command", "camera"],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        let shown = if k.len() <= 32 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            format!("{k:?}")
        } else {
            "a key".to_string()
        };
        return Err(format!(
            "{command}: unknown key {shown} (allowed: {})",
            allowed.join(", ")
        ));
    }
    let camera = camera(obj, cameras)?;
    let one = |c: Option<usize>| c.ok_or_else(|| format!("camera: {command} needs a camera"));
    Ok(match command {
        "pause" => Action::Pause {
            camera: one(camera)?,
        },
        "resume" => Action::Resume {
            camera: one(camera)?,
        },
        "trigger" => Action::Trigger {
            camera: one(camera)?,
        },
        "snapshot" => Action::Snapshot {
            camera: one(camera)?,
        },
        "thresholds" => Action::Thresholds {
            camera,
            change: threshold_change(obj)?,
        },
        _ => Action::Metrics,
    })
}

/// The camera named, if any; an unknown one is an error that lists the configured ones.
fn camera(obj: &Map<String, Value>, cameras: &[String]) -> Result<Option<usize>, String> {
    match obj.get("camera") {
        None => Ok(None),
        Some(Value::String(s)) => cameras
            .iter()
            .position(|c| c == s)
            .map(Some)
            .ok_or_else(|| format!("camera: no such camera (cameras: {})", cameras.join(", "))),
        Some(_) => Err("camera: must be a string".to_string()),
    }
}

fn threshold_change(obj: &Map<String, Value>) -> Result<ThresholdChange, String> {
    let value = |key: &str| -> Result<Option<f32>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => {
                let v = n.as_f64().unwrap_or(f64::NAN);
                if v.is_finite() && (0.0..=MAX_THRESHOLD).contains(&v) {
                    Ok(Some(v as f32))
                } else {
                    Err(format!(
                        "{key}: must be a finite number from 0 to {MAX_THRESHOLD}"
                    ))
                }
            }
            Some(_) => Err(format!(
                "{key}: must be a finite number from 0 to {MAX_THRESHOLD}"
            )),
        }
    };
    let (image, pixel) = (value("image")?, value("pixel")?);
    match obj.get("reset") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) if image.is_none() && pixel.is_none() => {
            return Ok(ThresholdChange::Reset)
        }
        Some(Value::Bool(true)) => {
            return Err("reset: true takes no image or pixel threshold".to_string())
        }
        Some(_) => return Err("reset: must be true or false".to_string()),
    }
    if image.is_none() && pixel.is_none() {
        return Err("thresholds: give image and/or pixel, or reset: true".to_string());
    }
    Ok(ThresholdChange::Set { image, pixel })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cams() -> Vec<String> {
        vec!["belt".to_string(), "door".to_string()]
    }

    #[test]
    fn requests_are_read_and_bounded() {
        let r = parse(r#"{"id":"r1","command":"pause","camera":"door"}"#, &cams()).unwrap();
        assert_eq!(r.action, Action::Pause { camera: 1 });
        assert_eq!(r.id.as_str(), "r1");
        let t = parse(r#"{"id":"t","command":"thresholds","image":2.5}"#, &cams()).unwrap();
        assert_eq!(
            t.action,
            Action::Thresholds {
                camera: None,
                change: ThresholdChange::Set {
                    image: Some(2.5),
                    pixel: None
                }
            }
        );
        // Malformed: the id comes back when it is valid, nothing unbounded does.
        let long = "x".repeat(65);
        let m = parse(&format!(r#"{{"id":"{long}","command":"pause"}}"#), &cams()).unwrap_err();
        assert_eq!((m.id, m.command), (None, Some("pause")));
        let m = parse(r#"{"id":"a b","command":"nope"}"#, &cams()).unwrap_err();
        assert_eq!((m.id, m.command), (None, None));
        let m = parse(
            r#"{"id":"r2","command":"pause","camera":"<script>"}"#,
            &cams(),
        )
        .unwrap_err();
        assert_eq!(m.id.unwrap().as_str(), "r2");
        assert!(!m.error.contains("script"), "{}", m.error);
        let m = parse(
            &format!(r#"{{"id":"r3","command":"trigger","camera":"belt","{long}":1}}"#),
            &cams(),
        )
        .unwrap_err();
        assert!(!m.error.contains(&long) && m.error.contains("unknown key"));
        for bad in [
            r#"{"id":"r","command":"thresholds","image":-1}"#,
            r#"{"id":"r","command":"thresholds","image":1e300}"#,
            r#"{"id":"r","command":"thresholds","pixel":"1"}"#,
            r#"{"id":"r","command":"thresholds"}"#,
            r#"{"id":"r","command":"thresholds","reset":true,"image":1}"#,
            r#"{"id":"r","command":"pause"}"#,
            "[1,2]",
            "{",
        ] {
            assert!(parse(bad, &cams()).is_err(), "{bad}");
        }
    }
}
