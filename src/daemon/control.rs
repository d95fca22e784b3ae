//! The control plane's input: every message the device receives over MQTT becomes one
//! [`Command`] here, or a [`Refusal`] with its reply, or nothing.
//!
//! `metrics` is open to anyone; `rollback` and `enroll` change what serves and must be
//! signed by a trusted key (`update::command`), `enroll` unsigned only with
//! `bundles.allow_unsigned_enroll`. Bundle chunks arrive on their own topics and are
//! checked by the installer.
//!
//! Operator requests are JSON objects (`{"id": "r1", "command": "pause", ...}`, read by
//! `operator::request`), unsigned, or as the `command` text of a signed envelope. Those
//! that change what the device reports (pause, resume, thresholds) must be signed unless
//! `commands.allow_unsigned`; trigger, snapshot and metrics are open. Every refusal of a
//! request is answered on `command/reply` with its id.

use anyhow::Result;
use ed25519_dalek::VerifyingKey;

use crate::config::{Config, PayloadFormat};
use crate::daemon::installer::BundleStatus;
use crate::daemon::mqtt::link::Received;
use crate::daemon::mqtt::spool::Message;
use crate::daemon::operator::reply::Reply;
use crate::daemon::operator::request::{self, Request};
use crate::daemon::payload;
use crate::daemon::topics::Topics;
use crate::enroll::request::{EnrollRequest, EnrollStatus};
use crate::update::command::{excerpt, Checked, CommandAuth, MAX_COMMAND_BYTES};

/// What the device was asked to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Publish the metrics now.
    Metrics,
    /// Go back to the previous model (signed).
    Rollback,
    /// Capture good frames of a camera and enroll them as a memory bank.
    Enroll(EnrollRequest),
    /// A chunk of a bundle transfer (on a chunk topic).
    Chunk(Vec<u8>),
    /// An operator request (JSON, with an id to answer).
    Operator(Request),
}

/// A command not run, and why; answered where its verdict would have come.
#[derive(Debug)]
pub enum Refusal {
    /// On `bundle/status` (rollback, or a command too broken to tell).
    Bundle(String),
    /// On `enroll/status`.
    Enroll(String),
    /// On `command/reply` (an operator request).
    Operator(Box<Reply>),
}

impl Refusal {
    /// The `rejected` status message that answers the refused command.
    pub fn reply(self, topics: &Topics, format: PayloadFormat) -> Result<Message> {
        Ok(match self {
            Refusal::Operator(reply) => reply.message(topics, format)?,
            Refusal::Enroll(detail) => Message {
                topic: topics.enroll_status(),
                payload: payload::encode(
                    &EnrollStatus {
                        state: "rejected",
                        detail: Some(detail),
                        ..Default::default()
                    },
                    format,
                )?,
            },
            Refusal::Bundle(detail) => Message {
                topic: topics.bundle_status(),
                payload: payload::encode(
                    &BundleStatus {
                        state: "rejected",
                        reason: Some("unauthorized"),
                        detail: Some(detail),
                        ..Default::default()
                    },
                    format,
                )?,
            },
        })
    }
}

/// The command parser: checks signatures, then reads the command.
pub struct Control {
    topics: Topics,
    /// With `[bundles]`: checks signed commands against its trusted keys and state folder.
    auth: Option<CommandAuth>,
    allow_unsigned_enroll: bool,
    /// `commands.allow_unsigned`: pause, resume and thresholds unsigned.
    allow_unsigned_control: bool,
    cameras: Vec<String>,
}

impl Control {
    /// `trusted` are `bundles.trusted_keys` (with `[bundles]`).
    pub fn open(
        config: &Config,
        topics: Topics,
        trusted: Option<Vec<VerifyingKey>>,
    ) -> Result<Self> {
        let auth = match (&config.bundles, trusted) {
            (Some(b), Some(keys)) => {
                Some(CommandAuth::open(&config.device_id, keys, &b.state_dir)?)
            }
            _ => None,
        };
        Ok(Control {
            topics,
            auth,
            allow_unsigned_enroll: config
                .bundles
                .as_ref()
                .is_some_and(|b| b.allow_unsigned_enroll),
            allow_unsigned_control: config.commands.allow_unsigned,
            cameras: config.cameras.iter().map(|c| c.name.clone()).collect(),
        })
    }

    /// One received message: a command, a refusal, or nothing to do (blank, unknown:
    /// logged).
    pub fn parse(&mut self, msg: Received) -> Result<Option<Command>, Refusal> {
        if self.topics.is_chunk(&msg.topic) {
            return Ok(Some(Command::Chunk(msg.payload)));
        }
        if msg.payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if is_unsigned_request(&msg.payload) {
            return self.request(&String::from_utf8_lossy(&msg.payload), false);
        }
        let (text, signed) = self.authenticate(&msg)?;
        if text.starts_with('{') {
            return self.request(&text, signed);
        }
        let mut words = text.split_whitespace();
        let unsigned = |what: &str| {
            log::warn!("{}: unsigned {what} refused", msg.topic);
            format!(
                "unauthorized: {what} changes the serving model and must be signed by a trusted \
                 key (maeday-edge bundle command)"
            )
        };
        match words.next() {
            Some("metrics") => Ok(Some(Command::Metrics)),
            Some("rollback") if !signed => Err(Refusal::Bundle(unsigned("rollback"))),
            Some("rollback") => Ok(Some(Command::Rollback)),
            Some("enroll") if !signed && !self.allow_unsigned_enroll => {
                Err(Refusal::Enroll(unsigned("enroll")))
            }
            Some("enroll") => {
                let args: Vec<&str> = words.collect();
                self.enroll(&args).map(Some).map_err(|why| {
                    log::warn!("{}: {why}", msg.topic);
                    Refusal::Enroll(why)
                })
            }
            _ => {
                log::warn!(
                    "unknown command {:?} on {} (known: metrics, rollback, enroll [frames] [camera])",
                    excerpt(text.as_bytes(), 200),
                    msg.topic
                );
                Ok(None)
            }
        }
    }

    /// The command's text and whether a trusted key signed it.
    fn authenticate(&mut self, msg: &Received) -> Result<(String, bool), Refusal> {
        let checked = match self.auth.as_mut() {
            Some(a) => a.check(&msg.payload),
            None if msg.payload.len() > MAX_COMMAND_BYTES => Checked::Refused {
                command: None,
                why: format!("command of {} bytes", msg.payload.len()),
            },
            None => Checked::Unsigned(String::from_utf8_lossy(&msg.payload).trim().to_string()),
        };
        match checked {
            Checked::Unsigned(t) => Ok((t, false)),
            Checked::Signed(t) => Ok((t, true)),
            Checked::Refused { command, why } => {
                log::warn!(
                    "command refused on {}: {why} ({})",
                    msg.topic,
                    excerpt(&msg.payload, 200)
                );
                let why = format!("refused: {why}");
                Err(match command {
                    Some(c) if c.starts_with('{') => {
                        Refusal::Operator(Box::new(self.refused(&c, why)))
                    }
                    Some(c) if c.starts_with("enroll") => Refusal::Enroll(why),
                    _ => Refusal::Bundle(why),
                })
            }
        }
    }

    /// An operator request's JSON (`signed`: it came in a verified envelope).
    fn request(&self, text: &str, signed: bool) -> Result<Option<Command>, Refusal> {
        if !signed {
            if let Some(inner) = envelope_command(text) {
                // A signed envelope the device cannot check (no `[bundles]` keys).
                let why = "refused: signed commands need [bundles] trusted_keys".to_string();
                return Err(Refusal::Operator(Box::new(self.refused(&inner, why))));
            }
        }
        let req = request::parse(text, &self.cameras).map_err(|m| {
            log::warn!("command request refused: {}", m.error);
            Refusal::Operator(Box::new(Reply::malformed(m)))
        })?;
        let name = req.action.name();
        if req.action.changes_reports() && !signed && !self.allow_unsigned_control {
            log::warn!("unsigned {name} refused (request {})", req.id.as_str());
            let why = format!(
                "unauthorized: {name} changes what the device reports and must be signed by a \
                 trusted key (maeday-edge bundle command), unless commands.allow_unsigned"
            );
            let reply = Reply::error(Some(req.id), Some(name), why);
            return Err(Refusal::Operator(Box::new(reply)));
        }
        Ok(Some(Command::Operator(req)))
    }

    /// The reply refusing a request for `why`, with its id if it has a readable one.
    fn refused(&self, text: &str, why: String) -> Reply {
        match request::parse(text, &self.cameras) {
            Ok(r) => Reply::error(Some(r.id), Some(r.action.name()), why),
            Err(m) => Reply::error(m.id, m.command, why),
        }
    }

    /// `enroll [frames] [camera]`, or why not.
    fn enroll(&self, args: &[&str]) -> Result<Command, String> {
        let req = EnrollRequest::parse(args).map_err(|e| format!("{e:#}"))?;
        if let Some(c) = req.camera.as_ref().filter(|c| !self.cameras.contains(c)) {
            return Err(format!(
                "enroll: no camera {c:?} (cameras: {:?})",
                self.cameras
            ));
        }
        if self.auth.is_none() {
            return Err(
                "enroll: enrollment installs into a model slot and needs [bundles]".to_string(),
            );
        }
        Ok(Command::Enroll(req))
    }
}

/// Whether the payload is an unsigned operator request: a JSON object without `sig`.
fn is_unsigned_request(payload: &[u8]) -> bool {
    payload.len() <= MAX_COMMAND_BYTES
        && payload.trim_ascii_start().first() == Some(&b'{')
        && serde_json::from_slice::<serde_json::Value>(payload)
            .is_ok_and(|v| request::is_request(&v))
}

/// The `command` text of a signed envelope (`{"device", "seq", "command", "key_id", "sig"}`).
fn envelope_command(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("sig")?;
    Some(v.get("command")?.as_str()?.to_string())
}
