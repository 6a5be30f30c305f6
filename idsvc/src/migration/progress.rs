//! Progress on stderr: rows, rows/s and (when the total is known) ETA, at
//! most once a second.

use std::io::Write;
use std::time::{Duration, Instant};

pub struct Progress {
    job: &'static str,
    enabled: bool,
    expected: Option<u64>,
    done: u64,
    started: Instant,
    start_rows: u64,
    last: Instant,
}

impl Progress {
    pub fn new(job: &'static str, enabled: bool, expected: Option<u64>, already: u64) -> Self {
        let now = Instant::now();
        Self {
            job,
            enabled,
            expected,
            done: already,
            started: now,
            start_rows: already,
            last: now,
        }
    }

    pub fn advance(&mut self, rows: u64) {
        self.done += rows;
        if self.enabled && self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            self.print("\r");
        }
    }

    pub fn finish(&mut self) {
        if self.enabled {
            self.print("\n");
        }
    }

    fn print(&self, end: &str) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.done - self.start_rows) as f64 / secs;
        let eta = match self.expected {
            Some(total) if rate > 0.0 && total > self.done => {
                format!(", ETA {:.0} s", (total - self.done) as f64 / rate)
            }
            _ => String::new(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "{}: {} rows, {:.0} rows/s{eta}{end}",
            self.job, self.done, rate
        );
        let _ = err.flush();
    }
}
