//! This process's CPU time, to the kernel's tick (10 ms).
//!
//! Why beside `process_cpu_seconds_total`: that counter, from
//! metrics-process, counts whole seconds (counters are integers), which
//! hides what a run of a few seconds cost. `tillstream_process_cpu_seconds`
//! carries the same time to the tick, for `tillstream-loadgen`'s report
//! of the server's CPU an event.

/// Clock ticks a second in `/proc` (`USER_HZ`), which the kernel keeps at
/// 100 in the ABI on every architecture it runs tillstream on.
const TICKS_PER_S: f64 = 100.0;

/// User plus system CPU seconds this process has used (Linux:
/// `/proc/self/stat`; `None` elsewhere or if it cannot be read).
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// The same for process `pid` (or `"self"`), from `/proc/PID/stat`.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    cpu_seconds_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/PID/stat` line, counted
/// after the command name, which may hold spaces and parentheses.
fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (tillstream (x) y) S 1 4242 4242 0 -1 4194560 5000 0 12 0 \
                    250 75 0 0 20 0 9 0 123456 1000000 2000";
        assert_eq!(cpu_seconds_of_stat(stat), Some(3.25));
        assert_eq!(cpu_seconds_of_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(cpu_seconds_of_stat("no name"), None);
    }

    #[test]
    fn this_processs_cpu_time_reads_and_grows() {
        let before = process_cpu_seconds();
        assert!(before.is_some_and(|s| s >= 0.0), "{before:?}");
        // Busy until the reading moves (a tick or two), for 10 s at most.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after <= before && start.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            after = process_cpu_seconds();
        }
        assert!(after > before, "{before:?} then {after:?}");
    }
}
