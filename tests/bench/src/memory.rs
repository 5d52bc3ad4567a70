//! Resident memory of each process, sampled once a second across the run and once after the
//! last phase. PostgreSQL is a postmaster and its backends sharing memory: it is counted as the
//! sum of their PSS (proportional set size, shared pages split among their users); the others
//! as their RSS.
//!
//! Beside it, each second, the CPU time of each process (PostgreSQL's with its backends'), of
//! the benchmark's own process, and of the whole machine (`/proc/stat`), so that a window of the
//! run can say where the cores went ([`Sampler::cpu_between`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backlog::cpu_seconds;

#[derive(Clone, Debug)]
pub struct Process {
    pub name: String,
    pub pid: u32,
    /// Count the process and its children's PSS (PostgreSQL).
    pub with_children: bool,
}

#[derive(Default)]
struct Samples {
    /// Per process: (seconds since start, KiB).
    series: BTreeMap<String, Vec<(f64, u64)>>,
    /// When each CPU sample was taken (seconds since the start, and the time), and what it read.
    cpu: Vec<(f64, DateTime<Utc>, CpuSample)>,
}

/// CPU seconds so far: per process (the benchmark's own as `benchmark`), and the machine's.
#[derive(Clone, Default)]
struct CpuSample {
    processes: BTreeMap<String, f64>,
    /// Seconds all cores spent busy (everything but idle and iowait), and in all.
    machine_busy: f64,
    machine_all: f64,
}

/// Where the cores went between two instants of the run, in cores (CPU seconds per second).
#[derive(Serialize)]
pub struct CpuWindow {
    /// The span actually covered by the samples (they are a second apart).
    pub seconds: f64,
    /// Per process, and `benchmark` for the load generator itself.
    pub cores: BTreeMap<String, f64>,
    /// The machine's busy cores, whoever used them.
    pub busy_cores: f64,
    /// The machine's cores.
    pub all_cores: f64,
}

pub struct Sampler {
    samples: Arc<Mutex<Samples>>,
    processes: Arc<Vec<Process>>,
    started: Instant,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Serialize)]
pub struct Summary {
    pub samples: usize,
    /// KiB at the first sample after the warm-up.
    pub after_warm_up_kib: u64,
    pub max_kib: u64,
    pub last_kib: u64,
    /// Growth from after the warm-up to the last sample, in percent.
    pub growth_percent: f64,
}

impl Sampler {
    pub fn start(processes: Vec<Process>) -> Self {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let processes = Arc::new(processes);
        let started = Instant::now();
        let (into, of) = (samples.clone(), processes.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                sample(&of, started, &into);
            }
        });
        Self {
            samples,
            processes,
            started,
            task,
        }
    }

    /// Takes a sample now, beside the ones taken every second: after the last phase, so that a
    /// phase shorter than a second cannot end between two samples unseen.
    pub fn sample_now(&self) {
        sample(&self.processes, self.started, &self.samples);
    }

    /// Where the cores went from `from` to `to`: the samples from the last one taken at or
    /// before `from` to the first one at or after `to` (None when the samples do not cover the
    /// window).
    pub fn cpu_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<CpuWindow> {
        let samples = self.samples.lock().expect("sampler lock");
        let cpu = &samples.cpu;
        let (_, first_at, first) = cpu.iter().rev().find(|(_, at, _)| *at <= from)?;
        let (_, last_at, last) = cpu.iter().find(|(_, at, _)| *at >= to)?;
        let seconds = (*last_at - *first_at).num_microseconds()? as f64 / 1e6;
        if seconds <= 0.0 {
            return None;
        }
        let cores = last
            .processes
            .iter()
            .filter_map(|(name, end)| {
                let start = first.processes.get(name)?;
                Some((name.clone(), (end - start) / seconds))
            })
            .collect();
        Some(CpuWindow {
            seconds,
            cores,
            busy_cores: (last.machine_busy - first.machine_busy) / seconds,
            all_cores: (last.machine_all - first.machine_all) / seconds,
        })
    }

    /// Every CPU sample: per process (`benchmark` the load generator, `machine_busy` and
    /// `machine_all` the machine's cores), (seconds since the start, CPU seconds so far).
    pub fn cpu_series(&self) -> BTreeMap<String, Vec<(f64, f64)>> {
        let samples = self.samples.lock().expect("sampler lock");
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (t, _, cpu) in &samples.cpu {
            let t = *t;
            for (name, seconds) in &cpu.processes {
                series.entry(name.clone()).or_default().push((t, *seconds));
            }
            for (name, seconds) in [
                ("machine_busy", cpu.machine_busy),
                ("machine_all", cpu.machine_all),
            ] {
                series.entry(name.into()).or_default().push((t, seconds));
            }
        }
        series
    }

    /// Every sample: per process, (seconds since the start, KiB).
    pub fn series(&self) -> BTreeMap<String, Vec<(f64, u64)>> {
        self.samples.lock().expect("sampler lock").series.clone()
    }

    /// Per process: what it used after `warm_up` seconds, at most, and at the end.
    pub fn summary(&self, warm_up: f64) -> BTreeMap<String, Summary> {
        self.task.abort();
        let samples = self.samples.lock().expect("sampler lock");
        samples
            .series
            .iter()
            .filter_map(|(name, series)| {
                let warm = series.iter().find(|(t, _)| *t >= warm_up)?.1;
                let last = series.last()?.1;
                let max = series.iter().map(|(_, k)| *k).max()?;
                Some((
                    name.clone(),
                    Summary {
                        samples: series.len(),
                        after_warm_up_kib: warm,
                        max_kib: max,
                        last_kib: last,
                        growth_percent: (last as f64 - warm as f64) / warm.max(1) as f64 * 100.0,
                    },
                ))
            })
            .collect()
    }
}

/// One sample of every process's memory and CPU.
fn sample(processes: &[Process], started: Instant, into: &Mutex<Samples>) {
    let t = started.elapsed().as_secs_f64();
    let mut cpu = CpuSample::default();
    for p in processes {
        if let Ok(seconds) = cpu_seconds(p.pid, p.with_children) {
            cpu.processes.insert(p.name.clone(), seconds);
        }
    }
    if let Ok(seconds) = cpu_seconds(std::process::id(), false) {
        cpu.processes.insert("benchmark".into(), seconds);
    }
    if let Some((busy, all)) = machine_cpu_seconds() {
        (cpu.machine_busy, cpu.machine_all) = (busy, all);
    }
    into.lock()
        .expect("sampler lock")
        .cpu
        .push((t, Utc::now(), cpu));
    for p in processes {
        let kib = if p.with_children {
            tree_pss_kib(p.pid)
        } else {
            rss_kib(p.pid)
        };
        if let Some(kib) = kib {
            into.lock()
                .expect("sampler lock")
                .series
                .entry(p.name.clone())
                .or_default()
                .push((t, kib));
        }
    }
}

/// The machine's CPU seconds so far, busy and in all, from the first line of /proc/stat (ticks
/// of USER_HZ, 100 on Linux: user, nice, system, idle, iowait, irq, softirq, steal).
fn machine_cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let all: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Some(((all - idle) / 100.0, all / 100.0))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, "VmRSS:")
}

fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    field_kib(&rollup, "Pss:")
}

fn field_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// PSS of `pid` and its children (a postmaster's backends are its children).
fn tree_pss_kib(pid: u32) -> Option<u64> {
    let mut total = pss_kib(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent's pid is the second field after the command, which is in parentheses.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            total += pss_kib(child).unwrap_or(0);
        }
    }
    Some(total)
}
