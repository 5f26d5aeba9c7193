//! Process accounting from `/proc` (Linux): CPU time and memory of the server under test and
//! of the generator itself, and the open-files limit.
use std::fs;

/// CPU seconds (user + system) consumed so far by `pid`, or `None` if it cannot be read.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// CPU seconds of this process.
pub(crate) fn self_cpu_secs() -> Option<f64> {
    cpu_secs(std::process::id())
}

/// utime + stime in clock ticks from the text of `/proc/PID/stat`.
fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces: split after the
    // last ')'. Then utime and stime are fields 14 and 15, i.e. the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = it.next()?.parse().ok()?;
    let stime: u64 = it.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The process (of those this user may look into) with a TCP socket listening on `port`:
/// the socket's inode from `/proc/net/tcp` and `tcp6`, then the process holding it among
/// `/proc/*/fd`. `None` when there is none, or several hold it (a fork that shares it).
pub(crate) fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                let t = target.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|inode| inodes.contains(&inode))
            })
        });
        if holds {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

/// Inodes of the sockets in a `/proc/net/tcp` table listening (state `0A`) on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// A `kB` field of `/proc/PID/status` (such as `VmRSS` or `VmHWM`), in bytes.
pub(crate) fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&status, field)
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Raise the soft open-files limit to the hard limit; returns the resulting soft limit.
pub(crate) fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit; failure just leaves the old limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// Server CPU sampling over the measured window.
pub(crate) struct CpuWindow {
    pid: Option<u32>,
    server_start: Option<f64>,
    self_start: Option<f64>,
}

impl CpuWindow {
    /// Take the starting sample.
    pub fn start(pid: Option<u32>) -> CpuWindow {
        CpuWindow {
            pid,
            server_start: pid.and_then(cpu_secs),
            self_start: self_cpu_secs(),
        }
    }

    /// (server CPU seconds, generator CPU seconds) since [`CpuWindow::start`].
    pub fn stop(&self) -> (Option<f64>, Option<f64>) {
        let server = match (self.pid.and_then(cpu_secs), self.server_start) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        let me = match (self_cpu_secs(), self.self_start) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        };
        (server, me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_sockets_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 8080), vec![4242]);
        assert_eq!(listening_inodes(table, 8081), vec![4444]);
        assert!(listening_inodes(table, 9).is_empty());
    }

    #[test]
    fn finds_this_process_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
    }

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat = "1234 (my (odd) proc) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100";
        assert_eq!(parse_stat_cpu(stat), Some(300));
    }

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_field(s, "VmRSS"), Some(1024 * 1024));
        assert_eq!(parse_status_field(s, "VmHWM"), Some(2048 * 1024));
        assert_eq!(parse_status_field(s, "VmSwap"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(self_cpu_secs().is_some());
        assert!(status_bytes(std::process::id(), "VmRSS").unwrap() > 0);
        assert!(raise_nofile_limit() >= 64);
    }
}
