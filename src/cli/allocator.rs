//! The allocator, set up for what inference does: the same large buffers, frame after frame.
//!
//! tract allocates each plan step's output afresh on every run (megabytes per step at
//! N = 32), and glibc hands blocks that large back to the kernel when they are freed, so
//! every frame page-faults its buffers in again: ~20 000 faults (80 MB zeroed by the
//! kernel) per frame for the default model at N = 32 on one thread, 4-9% of the frame.
//! Keeping freed memory for the next frame removes them, and the peak RSS does not grow
//! (measured: 212 -> 184 MB at 1 thread, 267 -> 266 MB at 2; `tests/allocator.rs` checks
//! the faults).

/// Blocks up to 32 MiB (the most glibc allows for this setting) come from the heap rather
/// than their own mapping, and up to 256 MiB of free memory at the top of the heap is kept
/// rather than returned. Both are needed: either alone faults more than glibc's adaptive
/// default. Process-wide; returns whether it applied (glibc on Linux only).
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Safety: mallopt only changes allocator parameters; it may be called at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
