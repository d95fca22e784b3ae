//! Live enrollment on the inference thread: an `enroll` command names a camera and a frame
//! count; the next good frames of that camera (the same ROI crops inference scores) are
//! collected and handed to the installer, which builds the memory bank and installs it.
//!
//! One request at a time: a new one replaces the one still capturing.

use std::sync::mpsc::{Receiver, Sender};

use image::DynamicImage;

use crate::bank::store::Shot;
use crate::config::CameraConfig;
use crate::daemon::installer::InstallerInput;
use crate::enroll::request::{EnrollJob, EnrollRequest};

/// The inference thread's side of enrollment: requests in, captured frames out.
pub struct Enrollment {
    requests: Receiver<EnrollRequest>,
    installer: Sender<InstallerInput>,
    capturing: Option<Capturing>,
}

/// An enrollment in progress.
struct Capturing {
    camera: usize,
    want: usize,
    shots: Vec<Shot>,
}

impl Enrollment {
    pub fn new(requests: Receiver<EnrollRequest>, installer: Sender<InstallerInput>) -> Self {
        Enrollment {
            requests,
            installer,
            capturing: None,
        }
    }

    /// Take the requests that arrived since the last frame (the last one wins).
    /// `default_frames` is `[enroll] frames`.
    pub fn take_requests(&mut self, cameras: &[CameraConfig], default_frames: usize) {
        while let Ok(req) = self.requests.try_recv() {
            let camera = req
                .camera
                .as_ref()
                .and_then(|name| cameras.iter().position(|c| &c.name == name))
                .unwrap_or(0);
            let want = req.frames.unwrap_or(default_frames);
            if self.capturing.is_some() {
                log::warn!("enroll: a new request replaces the one still capturing");
            }
            log::info!(
                "enroll: capturing {want} good frame(s) from camera {:?}",
                cameras[camera].name
            );
            self.capturing = Some(Capturing {
                camera,
                want,
                shots: Vec::new(),
            });
        }
    }

    /// A scored frame: kept if its camera is enrolling; the last one wanted sends the job.
    pub fn offer(&mut self, camera: usize, cam: &CameraConfig, seq: u64, crop: &DynamicImage) {
        let Some(c) = self.capturing.as_mut().filter(|c| c.camera == camera) else {
            return;
        };
        c.shots.push(Shot {
            name: format!("{}/{seq}", cam.name),
            image: crop.clone(),
        });
        if c.shots.len() < c.want {
            return;
        }
        let shots = std::mem::take(&mut c.shots);
        self.capturing = None;
        log::info!(
            "enroll: {} good frame(s) captured, building the bank",
            shots.len()
        );
        let job = EnrollJob {
            camera: cam.name.clone(),
            fit: cam.fit(),
            shots,
        };
        if self.installer.send(InstallerInput::Enroll(job)).is_err() {
            log::error!("enroll: the installer has stopped");
        }
    }
}
