//! What the daemon announces once, before the first result: with `[events]`, the events'
//! state machine and each camera's retained `OFF`; with `mqtt.home_assistant`, the
//! retained discovery configs. Both are re-published at every connect.

use crate::config::Config;
use crate::daemon::discovery::Discovery;
use crate::daemon::incidents::Incidents;
use crate::daemon::outputs::Outputs;
use crate::daemon::startup::Serving;
use crate::daemon::topics::Topics;

/// With `[events]`: the events' state machine, and each camera's retained `OFF`; with
/// `mqtt.home_assistant`: the retained discovery configs.
pub fn announce(
    config: &Config,
    serving: &Serving,
    topics: &Topics,
    outputs: &mut Outputs,
) -> Option<Incidents> {
    let mqtt = config.mqtt.as_ref()?;
    let cameras: Vec<String> = config.cameras.iter().map(|c| c.name.clone()).collect();
    let incidents = config.events.as_ref().map(|e| {
        Incidents::new(
            e,
            topics.clone(),
            config.output.format,
            mqtt.max_packet_bytes,
        )
    });
    for m in incidents.iter().flat_map(|i| i.initial_states(&cameras)) {
        outputs.set_retained(m);
    }
    if let Some(ha) = &mqtt.home_assistant {
        let discovery = Discovery {
            prefix: &ha.discovery_prefix,
            device_id: &config.device_id,
            cameras: &cameras,
            topics,
            events: config.events.is_some(),
            evidence: config.events.as_ref().is_some_and(|e| e.evidence),
            model: &serving.detector.model.manifest.name,
        };
        discovery
            .configs()
            .into_iter()
            .for_each(|m| outputs.set_retained(m));
    }
    incidents
}
