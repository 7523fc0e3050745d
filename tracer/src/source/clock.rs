//! The kernel's clock: `bpf_ktime_get_ns()` is CLOCK_MONOTONIC, and every timestamp the source
//! emits is in it.

/// Current CLOCK_MONOTONIC time in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Current CLOCK_REALTIME time in nanoseconds since the Unix epoch.
pub(crate) fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// CPU time the calling thread has used.
pub(crate) fn thread_cpu_time() -> std::time::Duration {
    std::time::Duration::from_nanos(read(libc::CLOCK_THREAD_CPUTIME_ID))
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
