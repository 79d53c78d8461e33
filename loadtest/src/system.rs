//! What the load generator needs from the operating system: enough file
//! descriptors for thousands of connections, its own CPU use and the whole
//! machine's.

use std::time::Instant;

use crate::measure::{CpuUse, MachineCpu, PhaseCpu};

/// Raises the soft open-file limit to the hard limit. Past the limit,
/// connections fail with no useful cause, so this runs before any load.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// CPU time used by this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct passed in.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The machine's CPU time so far, in clock ticks, from the first line of
/// /proc/stat; `None` where there is no such file (not Linux).
fn machine_ticks() -> Option<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    MachineTicks::parse(stat.lines().next()?)
}

/// The first line of /proc/stat: `cpu  user nice system idle iowait irq
/// softirq steal …`, summed over every core.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MachineTicks {
    busy: u64,
    steal: u64,
}

impl MachineTicks {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [user, nice, system, _idle, _iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        Some(Self {
            busy: user + nice + system + irq + softirq,
            steal,
        })
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Measures the generator's CPU use, and the machine's, over a stretch of
/// time.
pub struct CpuMeter {
    wall: Instant,
    cpu: f64,
    machine: Option<MachineTicks>,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds(),
            machine: machine_ticks(),
        }
    }

    /// The generator's CPU use, and the machine's where the OS tells.
    pub fn stop(&self) -> PhaseCpu {
        let wall = self.wall.elapsed().as_secs_f64().max(0.001);
        let machine = self.machine.zip(machine_ticks()).map(|(start, end)| {
            let cores = |ticks: u64| ticks as f64 / ticks_per_second() / wall;
            MachineCpu {
                cores_busy: cores(end.busy.saturating_sub(start.busy)),
                cores_stolen: cores(end.steal.saturating_sub(start.steal)),
            }
        });
        let generator = CpuUse {
            cores_busy: (cpu_seconds() - self.cpu) / wall,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        PhaseCpu { generator, machine }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_of_proc_stat_gives_busy_and_stolen_ticks() {
        let line = "cpu  49893 7 8965 84466 429 3 268 92 0 0";
        assert_eq!(
            MachineTicks::parse(line),
            Some(MachineTicks {
                busy: 49893 + 7 + 8965 + 3 + 268,
                steal: 92
            })
        );
        assert_eq!(MachineTicks::parse("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(MachineTicks::parse("cpu  1 2 3"), None);
    }

    #[test]
    fn the_meter_reads_this_machine() {
        let PhaseCpu { generator, machine } = CpuMeter::start().stop();
        assert!(generator.cores >= 1);
        if cfg!(target_os = "linux") {
            let machine = machine.expect("/proc/stat is read on Linux");
            assert!(machine.cores_busy >= 0.0 && machine.cores_stolen >= 0.0);
        }
    }
}
