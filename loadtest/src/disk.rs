//! How long this machine's disk made an fsync wait during a phase.
//!
//! A quorum queue confirms a write only once its log is synced to disk, so
//! when the disk stalls one sync for half a second, every write in flight
//! waits as long, and a phase with few writes (the baseline's) can miss its
//! SLO on that alone. The probe syncs a 4 KiB write to a file in the report
//! directory every 100 ms, as the broker's log would; the figure describes
//! the server only when its broker writes to the same disk, as when
//! `scripts/perf-gate.sh` runs the stack here. One small sync every 100 ms
//! adds nothing the broker, which syncs hundreds a second under load, would
//! notice.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Time between two probes.
const INTERVAL: Duration = Duration::from_millis(100);
/// A sync slower than this is counted as a stall.
const STALL: Duration = Duration::from_millis(100);

/// The disk's syncs over a phase's measured window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskSyncs {
    /// Probes that ran.
    pub syncs: u64,
    /// The slowest of them.
    pub slowest_ms: f64,
    /// How many took longer than 100 ms.
    pub stalls: u64,
}

impl DiskSyncs {
    fn record(&mut self, took: Duration) {
        self.syncs += 1;
        self.slowest_ms = self.slowest_ms.max(took.as_secs_f64() * 1000.0);
        self.stalls += u64::from(took > STALL);
    }
}

/// A running probe; [`DiskProbe::stop`] ends it and gives its figures.
pub struct DiskProbe {
    stop: Sender<()>,
    thread: JoinHandle<DiskSyncs>,
    path: PathBuf,
}

impl DiskProbe {
    /// Starts probing `dir`'s disk; syncs that start before `exclude` has
    /// passed (ramp-up and warm-up) are left out. `None` when the probe file
    /// cannot be created.
    pub fn start(dir: &Path, exclude: Duration) -> Option<Self> {
        let path = dir.join("disk-probe");
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .ok()?;
        let (stop, stopped) = mpsc::channel();
        let measure_from = Instant::now() + exclude;
        let thread = std::thread::Builder::new()
            .name("disk-probe".into())
            .spawn(move || {
                let mut syncs = DiskSyncs::default();
                loop {
                    let measured = Instant::now() >= measure_from;
                    match one_sync(&file) {
                        Some(took) if measured => syncs.record(took),
                        _ => {}
                    }
                    match stopped.recv_timeout(INTERVAL) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return syncs,
                    }
                }
            })
            .ok()?;
        Some(Self { stop, thread, path })
    }

    /// Ends the probe, removes its file and returns what it measured.
    pub fn stop(self) -> Option<DiskSyncs> {
        let _ = self.stop.send(());
        let syncs = self.thread.join().ok();
        let _ = std::fs::remove_file(&self.path);
        syncs.filter(|s| s.syncs > 0)
    }
}

/// Writes one page and waits for it to reach the disk; `None` when either fails.
fn one_sync(file: &File) -> Option<Duration> {
    let page = [0u8; 4096];
    file.write_all_at(&page, 0).ok()?;
    let started = Instant::now();
    file.sync_data().ok()?;
    Some(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_syncs_until_stopped_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("svc-disk-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probe = DiskProbe::start(&dir, Duration::ZERO).expect("the probe starts");
        std::thread::sleep(Duration::from_millis(250));
        let syncs = probe.stop().expect("it synced");
        assert!(syncs.syncs >= 2, "{syncs:?}");
        assert!(syncs.slowest_ms > 0.0);
        assert!(!dir.join("disk-probe").exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn syncs_before_the_measured_window_are_left_out() {
        let dir = std::env::temp_dir().join(format!("svc-disk-window-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let probe = DiskProbe::start(&dir, Duration::from_secs(3600)).expect("the probe starts");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(probe.stop(), None);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_sync_over_100_ms_is_a_stall() {
        let mut syncs = DiskSyncs::default();
        syncs.record(Duration::from_millis(3));
        syncs.record(Duration::from_millis(570));
        syncs.record(Duration::from_millis(101));
        assert_eq!(
            syncs,
            DiskSyncs {
                syncs: 3,
                slowest_ms: 570.0,
                stalls: 2
            }
        );
    }

    #[test]
    fn no_probe_where_its_file_cannot_be_made() {
        assert!(DiskProbe::start(Path::new("/nonexistent/dir"), Duration::ZERO).is_none());
    }
}
