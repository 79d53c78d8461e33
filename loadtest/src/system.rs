//! What the load generator needs from the operating system: enough file
//! descriptors for thousands of connections, its own CPU use and the whole
//! machine's.

use std::{
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::measure::{CpuUse, MachineCpu};

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

/// What a phase cost in CPU: the generator's own, and the whole machine's
/// where the OS tells (Linux), over the phase and per second.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseCpu {
    pub generator: CpuUse,
    pub machine: Option<MachineCpu>,
    pub timeline: Vec<CpuSample>,
}

/// One second's CPU: the generator's, and the machine's busy and stolen
/// cores (`None` where the OS does not tell).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct CpuSample {
    /// Seconds since the phase started.
    pub second: u64,
    pub generator_cores: f64,
    pub machine_busy_cores: Option<f64>,
    pub machine_stolen_cores: Option<f64>,
}

/// A reading of both clocks.
#[derive(Debug, Clone, Copy)]
struct Reading {
    wall: Instant,
    cpu: f64,
    machine: Option<MachineTicks>,
}

impl Reading {
    fn now() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds(),
            machine: machine_ticks(),
        }
    }

    /// Cores used from `earlier` to this reading: the generator's, and the
    /// machine's busy and stolen.
    fn since(&self, earlier: &Reading) -> (f64, Option<MachineCpu>) {
        let wall = self
            .wall
            .duration_since(earlier.wall)
            .as_secs_f64()
            .max(0.001);
        let machine = earlier.machine.zip(self.machine).map(|(start, end)| {
            let cores = |ticks: u64| ticks as f64 / ticks_per_second() / wall;
            MachineCpu {
                cores_busy: cores(end.busy.saturating_sub(start.busy)),
                cores_stolen: cores(end.steal.saturating_sub(start.steal)),
            }
        });
        ((self.cpu - earlier.cpu) / wall, machine)
    }
}

/// Samples the generator's CPU and the machine's once a second, on a thread
/// of its own, over a phase.
pub struct CpuMeter {
    start: Reading,
    stop: std::sync::mpsc::Sender<()>,
    sampler: std::thread::JoinHandle<Vec<CpuSample>>,
}

impl CpuMeter {
    pub fn start() -> Self {
        let start = Reading::now();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let sampler = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut last = start;
            let mut second = 0;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(
                (start.wall + Duration::from_secs(second + 1))
                    .saturating_duration_since(Instant::now()),
            ) {
                second += 1;
                let now = Reading::now();
                let (generator_cores, machine) = now.since(&last);
                samples.push(CpuSample {
                    second: second - 1,
                    generator_cores,
                    machine_busy_cores: machine.map(|m| m.cores_busy),
                    machine_stolen_cores: machine.map(|m| m.cores_stolen),
                });
                last = now;
            }
            samples
        });
        Self {
            start,
            stop,
            sampler,
        }
    }

    /// The generator's CPU use, and the machine's where the OS tells, over
    /// the whole phase and per second.
    pub fn stop(self) -> PhaseCpu {
        let (cores_busy, machine) = Reading::now().since(&self.start);
        let _ = self.stop.send(());
        let timeline = self.sampler.join().unwrap_or_default();
        PhaseCpu {
            generator: CpuUse {
                cores_busy,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            machine,
            timeline,
        }
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
        let meter = CpuMeter::start();
        std::thread::sleep(Duration::from_millis(2100));
        let PhaseCpu {
            generator,
            machine,
            timeline,
        } = meter.stop();
        // One sample per whole second.
        assert_eq!(timeline.len(), 2, "{timeline:?}");
        assert_eq!(timeline[1].second, 1);
        assert!(generator.cores >= 1);
        if cfg!(target_os = "linux") {
            let machine = machine.expect("/proc/stat is read on Linux");
            assert!(machine.cores_busy >= 0.0 && machine.cores_stolen >= 0.0);
        }
    }
}
