//! Resident memory of each process, sampled once a second across the run and once after the
//! last phase. PostgreSQL is a postmaster and its backends sharing memory: it is counted as the
//! sum of their PSS (proportional set size, shared pages split among their users); the others
//! as their RSS.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

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

/// One sample of every process's memory.
fn sample(processes: &[Process], started: Instant, into: &Mutex<Samples>) {
    let t = started.elapsed().as_secs_f64();
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
