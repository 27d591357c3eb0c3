//! CPU time and resident memory of a process from Linux's /proc: works for any server
//! (pushcenter, RabbitMQ's beam.smp) and for the generator itself.

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux target (the kernel's USER_HZ), and the
/// workspace forbids the unsafe call that would ask.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// user + system, seconds; with the children it has waited for when asked.
    pub(crate) cpu_seconds: f64,
    pub(crate) rss_bytes: Option<u64>,
}

/// Reads `/proc/<pid>` (`None`: this process), `None` when it is gone.
pub(crate) fn sample(pid: Option<u32>, with_children: bool) -> Option<Sample> {
    let dir = pid.map_or_else(|| "self".to_string(), |p| p.to_string());
    let stat = std::fs::read_to_string(format!("/proc/{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{dir}/status")).ok()?;
    Some(Sample {
        cpu_seconds: cpu_ticks(&stat, with_children)? as f64 / TICKS_PER_SECOND,
        rss_bytes: vm_rss(&status),
    })
}

/// Fields 14 and 15 (utime, stime), and 16, 17 (cutime, cstime) with the children.
/// The command name (field 2) may hold spaces and parentheses: count from the last ')'.
fn cpu_ticks(stat: &str, with_children: bool) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    let [ut, st, cut, cst] = f[..] else {
        return None;
    };
    Some(ut + st + if with_children { cut + cst } else { 0 })
}

fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This process's open-files limit (soft, hard) from /proc/self/limits; `None` for
/// unlimited or unreadable.
pub fn nofile_limit() -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return (None, None);
    };
    let mut f = line["Max open files".len()..].split_whitespace();
    let mut next = || f.next().and_then(|s| s.parse().ok());
    (next(), next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_counts_from_the_last_parenthesis() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(cpu_ticks(stat, false), Some(300));
        assert_eq!(cpu_ticks(stat, true), Some(310));
        assert_eq!(cpu_ticks("1 (x) S 1", false), None);
    }

    #[test]
    fn this_process_has_a_reading_and_a_limit() {
        let s = sample(None, true).expect("/proc/self");
        assert!(s.cpu_seconds >= 0.0);
        assert!(s.rss_bytes.unwrap_or(0) > 0);
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t   1234 kB\n"), Some(1234 * 1024));
        assert!(sample(Some(u32::MAX), false).is_none());
        assert!(nofile_limit().0.is_some());
    }
}
