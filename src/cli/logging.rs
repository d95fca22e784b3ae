//! Logging set up for where the daemon runs: a terminal gets env_logger's usual lines;
//! under systemd (stderr connected to the journal) each line starts with its syslog priority
//! (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug and trace), which journald turns into
//! the entry's PRIORITY, and carries no timestamp (the journal has its own).
//!
//! `RUST_LOG` selects what is logged in both cases.

use std::io::Write;

use crate::daemon::watchdog::stderr_is_journal;

/// rumqttd logs routine broker traffic at ERROR level through `tracing`: quiet unless asked
/// for (`RUST_LOG=rumqttd=info`). tract_onnx's one warning says that a graph's opset is
/// past 18, which every graph `export` writes is (23: fused attention); the engine warns
/// itself about opsets neither tract nor we test (`detect::engine::graph`).
const DEFAULT_FILTER: &str = "info,rumqttd=off,tracing=off,tract_onnx::model=error";

/// Install the logger (once, at start).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER));
    if stderr_is_journal() {
        builder.format(|f, record| {
            writeln!(
                f,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
