//! Giving memory back to the system after bursts.
//!
//! glibc's allocator keeps freed memory in its arenas (one per thread that allocated) instead
//! of returning it: after a burst of connections closed — 2,000 slow consumers with their
//! queued frames, or hundreds of thousands of channels — the process kept its high-water mark
//! with no client left. The server's periodic sweep calls [`Trimmer::after_sweep`], which asks
//! the allocator to release its free pages (`malloc_trim`) once the number of connections or
//! channels has dropped well below the peak seen since the last release. Between bursts this
//! costs nothing; a trim takes each arena's lock briefly.
//!
//! [`rss_bytes`] reads the process's resident memory for `/health`.

/// Connections or channels gone since the peak before a release is worth it.
const CONNECTIONS_DROP: usize = 64;
/// Channels gone since the peak before a release is worth it.
const CHANNELS_DROP: usize = 4096;

/// Remembers the peaks since the last release.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    peak_connections: usize,
    peak_channels: usize,
}

impl Trimmer {
    /// Called after each sweep with the most connections open at once since the previous
    /// call (so a burst shorter than the sweep interval counts), the connections open now and
    /// the channels now; returns whether memory was released.
    pub(crate) fn after_sweep(
        &mut self,
        peak_connections: usize,
        connections: usize,
        channels: usize,
    ) -> bool {
        self.peak_connections = self.peak_connections.max(peak_connections).max(connections);
        self.peak_channels = self.peak_channels.max(channels);
        let burst_over = self.peak_connections >= connections + CONNECTIONS_DROP
            || self.peak_channels >= channels + CHANNELS_DROP;
        if !burst_over {
            return false;
        }
        self.peak_connections = connections;
        self.peak_channels = channels;
        release_free_memory()
    }
}

/// Asks the allocator to return its free pages to the system; whether it could.
pub(crate) fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Resident memory of this process in bytes (`/proc/self/statm`); 0 where unavailable.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// What `/metrics` shows of the process besides its memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcessStats {
    /// User plus system CPU time (`/proc/self/stat`).
    pub(crate) cpu_seconds: f64,
    /// Open file descriptors (`/proc/self/fd`).
    pub(crate) open_fds: usize,
    /// The soft open-files limit.
    pub(crate) max_fds: u64,
}

/// Reads [`ProcessStats`]; fields that cannot be read are 0.
pub(crate) fn process_stats() -> ProcessStats {
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The command name (field 2) may hold spaces: count fields after its `)`.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace();
            // After `)`: state is field 3, utime field 14, stime field 15.
            let utime: u64 = fields.nth(11)?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            // SAFETY: sysconf with a valid name has no preconditions.
            let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            let tick = if tick > 0 { tick as f64 } else { 100.0 };
            Some((utime + stime) as f64 / tick)
        })
        .unwrap_or(0.0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        // `rlim_t` is `u64` on Linux, not everywhere.
        #[allow(clippy::unnecessary_cast)]
        let current = limit.rlim_cur as u64;
        current
    } else {
        0
    };
    ProcessStats {
        cpu_seconds,
        open_fds,
        max_fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_after_a_drop_from_the_peak() {
        let mut t = Trimmer::default();
        assert!(!t.after_sweep(10, 10, 10));
        assert!(!t.after_sweep(2_000, 2_000, 10));
        // Still near the peak: nothing to give back.
        assert!(!t.after_sweep(1_990, 1_990, 10));
        // The burst is over: released (or at least tried), peaks reset.
        t.after_sweep(1_990, 100, 10);
        assert_eq!(t.peak_connections, 100);
        assert!(!t.after_sweep(100, 100, 10));
        // A burst that came and went between two sweeps counts too.
        t.after_sweep(3_000, 5, 10);
        assert_eq!(t.peak_connections, 5);
        t.after_sweep(5, 5, 300_000);
        t.after_sweep(5, 5, 5);
        assert_eq!(t.peak_channels, 5);
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes() > 0);
    }

    #[test]
    fn process_stats_are_read() {
        let p = process_stats();
        if cfg!(target_os = "linux") {
            assert!(p.open_fds > 0);
            assert!(p.max_fds > 0);
            assert!(p.cpu_seconds >= 0.0);
        }
    }
}
