//! The offline tools behind the CLI's subcommands (score, eval, calibrate, enroll, bundle).

pub mod bundle;
pub mod tools;
