//! Keep tract's freed activation buffers in the heap between frames.
//!
//! tract allocates each op's output afresh on every run and frees it when the last reader is
//! done. At N = 32 most of those buffers are megabytes (a decoder activation is
//! 32 x 197 x 256 floats, 6.5 MB; the MLP's hidden layer four times that). glibc serves
//! anything above its mmap threshold with a fresh `mmap` and returns it with `munmap`, and
//! trims the top of the heap once 128 KiB lie free there; either way every frame touches
//! fresh pages and the kernel zero-fills them one page fault at a time: ~17,000 minor
//! faults a frame (68 MB), 6.6% of a frame's time under perf.
//!
//! [`keep_freed_buffers`] raises both thresholds once per process, so the second frame
//! onwards reuses the first frame's memory. The cost is resident memory: glibc keeps each
//! thread's arena at its high-water mark, fragmented, instead of handing pages back, so
//! the daemon's peak RSS grows (`benches/footprint.sh`, default model, 2 threads: 144.6 ->
//! 156.5 MB at N = 8, 239.9 -> 371.0 MB at N = 32). Engines call it unless
//! `model.keep_freed_buffers = false`. Measured with `benches/before-after.sh` (16 magnetic tiles x 3 rounds, N = 32,
//! interleaved, 2-core Zen 4): inference 511.4 -> 481.0 ms a frame at 1 thread (0.941),
//! 259.4 -> 238.0 ms at 2 (0.918), scores bit-identical; minor faults for 8 frames
//! 184,719 -> 45,718.
//!
//! Only glibc has these knobs (`mallopt`); elsewhere (musl, other systems) this does
//! nothing and says so in the log.

use std::sync::OnceLock;

/// What [`keep_freed_buffers`] did, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapTuning {
    /// glibc's thresholds were raised to these byte counts.
    Kept {
        mmap_threshold: usize,
        trim_threshold: usize,
    },
    /// This C library has no such knobs (or refused them): buffers go back to the system.
    Unavailable,
}

impl std::fmt::Display for HeapTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeapTuning::Kept {
                mmap_threshold,
                trim_threshold,
            } => write!(
                f,
                "freed buffers kept between frames (glibc mmap threshold {} MiB, trim \
                 threshold {} MiB)",
                mmap_threshold >> 20,
                trim_threshold >> 20
            ),
            HeapTuning::Unavailable => write!(f, "C library default (no mallopt)"),
        }
    }
}

/// Above this much free memory at the top of the heap glibc still gives it back, so a model
/// swap that frees a whole engine does not pin its memory for ever.
const TRIM_THRESHOLD: usize = 256 << 20;

/// Raise glibc's mmap and trim thresholds, once per process (later calls return the first
/// call's result). tract engines call it before they plan, unless told not to
/// ([`super::EngineOptions::keep_freed_buffers`]).
pub fn keep_freed_buffers() -> HeapTuning {
    static DONE: OnceLock<HeapTuning> = OnceLock::new();
    *DONE.get_or_init(|| {
        let tuning = tune();
        log::info!("heap: {tuning}");
        tuning
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> HeapTuning {
    // Some glibc versions cap the mmap threshold at half an arena heap (32 MiB on 64-bit;
    // Debian 12's 2.36 takes 1 GiB): ask for 1 GiB, fall back to that cap. Buffers above the
    // threshold still come from mmap (with 32 MiB only the MLP's hidden layer at 16+ masks
    // per worker; the faults fall almost as far: 184,719 -> 46,030 for 8 frames).
    let mmap_threshold = [1usize << 30, 32 << 20]
        .into_iter()
        .find(|&bytes| set(libc::M_MMAP_THRESHOLD, bytes));
    match mmap_threshold {
        Some(mmap_threshold) if set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) => HeapTuning::Kept {
            mmap_threshold,
            trim_threshold: TRIM_THRESHOLD,
        },
        _ => HeapTuning::Unavailable,
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(param: libc::c_int, bytes: usize) -> bool {
    let Ok(value) = libc::c_int::try_from(bytes) else {
        return false;
    };
    // SAFETY: mallopt takes two ints, reads no memory of ours and is thread-safe in glibc.
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> HeapTuning {
    HeapTuning::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After tuning, a freed 24 MiB buffer stays in the heap, so allocating it again touches
    /// no fresh pages; glibc's default serves it from a fresh mmap each time (checked through
    /// the kernel's count of this thread's minor page faults, which the second allocation
    /// must not raise by the buffer's 6,144 pages).
    ///
    /// It needs a process of its own, so it is ignored in the suite and run alone by
    /// `.ci/run` and `cross/qemu-test.sh` (`cargo test -p maeday-core --lib -- --ignored
    /// heap::`): among other tests glibc's state is not its own. Their frees raise its
    /// dynamic mmap threshold for the whole process (then a buffer is reused without the
    /// setting too), and their threads leave arena heaps (64 MiB at most each) that this
    /// test's thread may reuse, too full for 24 MiB (then it is mapped with the setting too:
    /// seen in CI under qemu).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    #[ignore = "needs a process of its own: cargo test -p maeday-core --lib -- --ignored heap::"]
    fn freed_buffers_are_reused_without_page_faults() {
        assert!(matches!(keep_freed_buffers(), HeapTuning::Kept { .. }));
        assert_eq!(
            keep_freed_buffers(),
            keep_freed_buffers(),
            "once per process"
        );
        let bytes = 24 << 20;
        let touch = || {
            let mut v = vec![0u8; bytes];
            // Write every page (vec! of zeros may come from calloc'd fresh pages untouched).
            for i in (0..bytes).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
        };
        touch();
        let before = minor_faults();
        touch();
        let faults = minor_faults() - before;
        assert!(
            faults < 1000,
            "a reused 24 MiB buffer cost {faults} page faults (6,144 pages if fresh)"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn minor_faults() -> i64 {
        // SAFETY: getrusage writes one rusage into the zeroed struct we own.
        unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
            usage.ru_minflt
        }
    }
}
