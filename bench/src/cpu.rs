//! CPU time of processes, so that a row can say how much CPU each side spent per
//! request, not only how fast it went.
//!
//! The figure is the sum over every thread of a process of the first field of
//! `/proc/{pid}/task/{tid}/schedstat`: nanoseconds spent on a CPU, kernel and
//! user time together, at scheduler resolution (unlike `utime`/`stime` of
//! `/proc/{pid}/stat`, which count 10 ms clock ticks — too coarse for a round of
//! 20 000 requests at a few µs each). Threads that exited during the interval
//! take their time with them; the services measured here keep their runtime's
//! worker threads for their whole life, so this does not happen between two
//! readings. (Source: `Documentation/scheduler/sched-stats.rst` of the Linux
//! kernel, "/proc/<pid>/schedstat".)

use std::time::Duration;

/// What the scheduler counted for a process: time on a CPU, and how many times one
/// of its threads was switched onto a CPU (the third field of `schedstat`, "# of
/// timeslices run on this cpu"): after waking from a wait, or after being preempted.
/// For a service that waits for its requests most are wake-ups, so per request it is
/// about the hand-offs a request costs; a process whose threads also wake on timers
/// (nats-server's Go runtime) counts those too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Time on a CPU, kernel and user.
    pub on_cpu: Duration,
    /// Times a thread of the process was put on a CPU.
    pub runs: u64,
}

/// [`Spent`] by every thread of `pid` so far; `None` when `/proc` cannot tell
/// (the process is gone, or the kernel lacks `CONFIG_SCHEDSTATS`).
pub fn process_sched(pid: u32) -> Option<Spent> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = Spent::default();
    let mut threads = 0;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let mut fields = text.split_whitespace().map(|n| n.parse::<u64>().ok());
        if let (Some(Some(ns)), Some(_waited), Some(Some(runs))) = (fields.next(), fields.next(), fields.next()) {
            total.on_cpu += Duration::from_nanos(ns);
            total.runs += runs;
            threads += 1;
        }
    }
    (threads > 0).then_some(total)
}

/// CPU time of every thread of `pid` so far ([`process_sched`]).
pub fn process_cpu(pid: u32) -> Option<Duration> {
    process_sched(pid).map(|spent| spent.on_cpu)
}

/// The CPU time a set of processes spends between [`CpuMeter::start`] and
/// [`CpuMeter::stop`].
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pids: Vec<Option<u32>>,
    at_start: Vec<Option<Spent>>,
}

impl CpuMeter {
    /// Reads what each of `pids` spent so far (a `None` pid is measured as unknown).
    pub fn start(pids: &[Option<u32>]) -> Self {
        let at_start = pids.iter().map(|pid| pid.and_then(process_sched)).collect();
        Self { pids: pids.to_vec(), at_start }
    }

    /// What each process spent since [`start`](Self::start), in the order given.
    pub fn stop(&self) -> Vec<Option<Spent>> {
        self.pids
            .iter()
            .zip(&self.at_start)
            .map(|(pid, start)| {
                let (now, start) = (pid.and_then(process_sched)?, (*start)?);
                Some(Spent {
                    on_cpu: now.on_cpu.saturating_sub(start.on_cpu),
                    runs: now.runs.saturating_sub(start.runs),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_accumulates_cpu_time_while_it_works() {
        let pid = std::process::id();
        let meter = CpuMeter::start(&[Some(pid), None]);
        let started = std::time::Instant::now();
        // Busy until the meter itself has seen 5 ms of CPU: on a loaded machine the
        // loop may wait for a core, so wall-clock time says nothing about CPU time.
        let mut x: u64 = 1;
        let own = loop {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let spent = meter.stop()[0].expect("schedstat of this process is readable").on_cpu;
            if spent >= Duration::from_millis(5) || started.elapsed() > Duration::from_secs(20) {
                break spent;
            }
        };
        assert!(own >= Duration::from_millis(5), "{own:?} of CPU after {:?} busy", started.elapsed());
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() as u32;
        assert!(own <= started.elapsed() * threads, "more CPU ({own:?}) than {threads} threads could spend");
        // A thread that sleeps is put back on a CPU when it wakes: one more run at least.
        let before = meter.stop()[0].expect("schedstat of this process is readable").runs;
        std::thread::sleep(Duration::from_millis(2));
        let spent = meter.stop();
        assert!(spent[0].is_some_and(|s| s.runs > before), "the thread woke: {before} then {spent:?}");
        assert_eq!(spent.len(), 2);
        assert_eq!(spent[1], None, "an unknown pid stays unknown");
        assert_eq!(process_cpu(u32::MAX), None, "no such process");
    }
}
