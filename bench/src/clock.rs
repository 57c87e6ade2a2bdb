//! A clock every process on the machine shares: `CLOCK_MONOTONIC` in
//! nanoseconds, so that a send time taken in one process and an arrival
//! time taken in another can be subtracted.

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds of the monotonic clock. Comparable across processes on the
/// same machine; meaningless across machines or reboots.
pub fn now_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or_default();
    let nanos = u64::try_from(now.tv_nsec).unwrap_or_default();
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_back() {
        let first = now_ns();
        let second = now_ns();
        assert!(second >= first);
        assert!(first > 0);
    }
}
