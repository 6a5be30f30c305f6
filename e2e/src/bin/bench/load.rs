//! Closed-loop load: N workers each send one request after another for a
//! fixed time; latencies go into one histogram.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// What one load phase achieved.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.1}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, {} errors)",
            self.rps, self.p50_ms, self.p99_ms, self.requests, self.errors
        )
    }
}

/// Runs `request(worker, n)` from `concurrency` workers for `duration`.
/// A request that returns an error still counts towards latency; errors are
/// reported, and a bench with errors says so rather than hiding them.
pub async fn drive<F, Fut>(concurrency: usize, duration: Duration, request: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let request = Arc::new(request);
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (request, histogram, errors) = (
                Arc::clone(&request),
                Arc::clone(&histogram),
                Arc::clone(&errors),
            );
            tokio::spawn(async move {
                let mut local = new_histogram();
                let mut n = 0;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    if let Err(error) = request(worker, n).await
                        && errors.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("first error: {error:#}");
                    }
                    local.saturating_record(sent.elapsed().as_micros() as u64);
                    n += 1;
                }
                histogram
                    .lock()
                    .await
                    .add(&local)
                    .expect("same histogram bounds");
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("load worker panicked");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().await;
    Stats {
        requests: histogram.len(),
        errors: errors.load(Ordering::Relaxed),
        rps: histogram.len() as f64 / elapsed,
        p50_ms: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Resident set size of a process in MiB, from `/proc/PID/status`.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?
        .parse()?;
    Ok(kib / 1024.0)
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/PID/stat`: a per-request cost that, unlike throughput, does not
/// move with whatever else the machine is doing.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(n)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// The unit of /proc's tick counts: Linux fixes USER_HZ at 100 for its
/// user-space ABI (`getconf CLK_TCK`), whatever the kernel's own HZ.
const USER_HZ: f64 = 100.0;

/// Where a phase's CPU went: each process's CPU microseconds per request.
/// On a machine where load generator, gateway, idsvc and MariaDB share two
/// cores, this says which of them a faster path would have to come from.
pub struct CpuMeter {
    processes: Vec<(&'static str, u32)>,
}

impl CpuMeter {
    /// This load generator, the gateway, idsvc, and MariaDB when it runs on
    /// this machine.
    pub fn new(gateway: u32, idsvc: u32) -> Self {
        let mut processes = vec![
            ("load", std::process::id()),
            ("gateway", gateway),
            ("idsvc", idsvc),
        ];
        let mariadb = std::process::Command::new("pidof")
            .arg("mariadbd")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|pids| pids.split_whitespace().next()?.parse().ok());
        if let Some(pid) = mariadb {
            processes.push(("mariadb", pid));
        }
        Self { processes }
    }

    pub fn read(&self) -> anyhow::Result<Vec<f64>> {
        self.processes
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid))
            .collect()
    }

    /// CPU µs per request of each process since `before`.
    pub fn per_request(&self, before: &[f64], requests: u64) -> anyhow::Result<CpuPerRequest> {
        let now = self.read()?;
        Ok(CpuPerRequest(
            self.processes
                .iter()
                .zip(now.iter().zip(before))
                .map(|((name, _), (now, before))| {
                    (*name, (now - before) * 1e6 / requests.max(1) as f64)
                })
                .collect(),
        ))
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuPerRequest(std::collections::BTreeMap<&'static str, f64>);

impl std::fmt::Display for CpuPerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CPU µs/request:")?;
        for (name, us) in &self.0 {
            write!(f, " {name} {us:.0}")?;
        }
        Ok(())
    }
}
