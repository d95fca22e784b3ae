//! Splitting an op's output among the threads of tract's pool, for our ops that run inside
//! a multithreaded tract scope (`multithread_tract_scope`).

use tract_linalg::multithread::{current_tract_executor, Executor};

/// Run `work(first unit, units)` over `out`'s units (`plane` floats each: a convolution's
/// output planes, a linear layer's rows): in one go, or,
/// inside a multithreaded tract scope (`multithread_tract_scope`), in one contiguous share
/// per thread of its pool. Each share is computed exactly as it would be alone.
pub fn in_shares(out: &mut [f32], plane: usize, work: impl Fn(usize, &mut [f32]) + Sync) {
    let planes = out.len() / plane.max(1);
    if let Executor::MultiThread(pool) = current_tract_executor() {
        let threads = pool.current_num_threads().min(planes);
        if threads > 1 {
            let per = planes.div_ceil(threads);
            let work = &work;
            pool.scope(|s| {
                for (i, share) in out.chunks_mut(per * plane).enumerate() {
                    s.spawn(move |_| work(i * per, share));
                }
            });
            return;
        }
    }
    work(0, out)
}
