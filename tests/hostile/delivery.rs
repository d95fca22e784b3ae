//! See tests/hostile.rs.

#[allow(unused_imports)]
use super::common::daemon::*;
