//! [`Shutdown`]: the one stop signal every daemon thread watches.
//!
//! SIGTERM/SIGINT (through `signal-hook`), `--max-frames`, the end of the sources and
//! tests all stop the daemon the same way: the flag is set, and every thread finishes what
//! it holds. A signal handler can only store the flag, so waiters also look at it every
//! [`RECHECK`]; [`Shutdown::trigger`] additionally wakes them at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a waiter sleeps before looking at the flag again.
pub const RECHECK: Duration = Duration::from_millis(50);

type Waker = Box<dyn Fn() + Send + Sync>;

/// The stop flag and whoever wants to be woken when it is set. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    wakers: Arc<Mutex<Vec<Waker>>>,
}

impl Shutdown {
    /// Wraps the flag signal handlers (and tests) set.
    pub fn new(flag: Arc<AtomicBool>) -> Shutdown {
        Shutdown {
            flag,
            wakers: Arc::default(),
        }
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Stop, and wake every registered waiter.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        for wake in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake();
        }
    }

    /// Call `wake` on [`Shutdown::trigger`] (a condition variable's `notify_all`, say).
    pub fn on_trigger(&self, wake: impl Fn() + Send + Sync + 'static) {
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(wake));
    }

    /// The raw flag, for the parts that take one (sources, the systemd watchdog).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}
