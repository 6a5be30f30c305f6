//! A job's progress: rows done, rows/s and (when the total is known) the time
//! left.
//!
//! On a terminal (an operator at a shell) it is an indicatif bar on stderr.
//! Anywhere else, such as a Kubernetes Job whose stderr is a stream of JSON
//! log records, a redrawn line would be glued onto the next record, so
//! progress is a `tracing` event every [`LOG_EVERY`] with the fields `rows`,
//! `rate` (rows/s in this run) and `eta` (seconds, when the total is known),
//! and one more when the run ends.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Often enough that a stalled job shows within a scrape or two of a log
/// dashboard, rare enough that a 20M-row run logs a few hundred lines.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// With a known total: `bulkload [00:01:02] ######---- 1.2M/20M rows, 19.4k/s, ETA 16m`.
const BAR_TEMPLATE: &str =
    "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows, {per_sec}, ETA {eta}";
/// Without one: `backfill [00:01:02] 1.2M rows, 19.4k/s`.
const SPINNER_TEMPLATE: &str = "{prefix} [{elapsed_precise}] {spinner} {human_pos} rows, {per_sec}";

pub struct Progress {
    job: &'static str,
    output: Output,
    expected: Option<u64>,
    done: u64,
    /// Rows earlier runs did (a resumed job): not part of this run's rate.
    start_rows: u64,
    started: Instant,
    last_log: Instant,
}

enum Output {
    /// `--quiet`.
    Off,
    Bar(ProgressBar),
    Log,
}

/// What a progress event reports.
#[derive(Debug, PartialEq)]
struct Snapshot {
    rows: u64,
    /// Rows per second in this run.
    rate: u64,
    /// Seconds left at that rate; `None` without a total or a rate.
    eta: Option<u64>,
}

impl Progress {
    /// `already`: rows a resumed job had done before this run.
    pub fn new(job: &'static str, enabled: bool, expected: Option<u64>, already: u64) -> Self {
        let output = if !enabled {
            Output::Off
        } else if std::io::stderr().is_terminal() {
            Output::Bar(bar(job, expected, already))
        } else {
            Output::Log
        };
        Self::with_output(job, output, expected, already, Instant::now())
    }

    fn with_output(
        job: &'static str,
        output: Output,
        expected: Option<u64>,
        already: u64,
        now: Instant,
    ) -> Self {
        Self {
            job,
            output,
            expected,
            done: already,
            start_rows: already,
            started: now,
            last_log: now,
        }
    }

    pub fn advance(&mut self, rows: u64) {
        self.advance_at(rows, Instant::now());
    }

    /// Ends the bar, or logs where the run stopped.
    pub fn finish(&mut self) {
        self.finish_at(Instant::now());
    }

    fn advance_at(&mut self, rows: u64, now: Instant) {
        self.done += rows;
        match &self.output {
            Output::Bar(bar) => bar.inc(rows),
            Output::Log if now.duration_since(self.last_log) >= LOG_EVERY => {
                self.last_log = now;
                self.log(now, false);
            }
            Output::Log | Output::Off => {}
        }
    }

    fn finish_at(&mut self, now: Instant) {
        match &self.output {
            Output::Bar(bar) => bar.finish(),
            Output::Log => self.log(now, true),
            Output::Off => {}
        }
    }

    fn snapshot(&self, now: Instant) -> Snapshot {
        let secs = now.duration_since(self.started).as_secs_f64().max(1e-3);
        let rate = (self.done - self.start_rows) as f64 / secs;
        let eta = match self.expected {
            Some(total) if rate > 0.0 && total > self.done => {
                Some(((total - self.done) as f64 / rate).round() as u64)
            }
            _ => None,
        };
        Snapshot {
            rows: self.done,
            rate: rate.round() as u64,
            eta,
        }
    }

    fn log(&self, now: Instant, end: bool) {
        let Snapshot { rows, rate, eta } = self.snapshot(now);
        let (job, total) = (self.job, self.expected);
        if end {
            let seconds = now.duration_since(self.started).as_secs();
            tracing::info!(job, rows, rate, total, seconds, "progress: run ended");
        } else {
            tracing::info!(job, rows, rate, eta, total, "progress");
        }
    }
}

fn bar(job: &'static str, expected: Option<u64>, already: u64) -> ProgressBar {
    let (len, template) = match expected {
        Some(total) => (Some(total), BAR_TEMPLATE),
        None => (None, SPINNER_TEMPLATE),
    };
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    // The templates are constants; a bad one would show in every test run.
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(job);
    bar.set_position(already);
    // The rate and ETA count this run only, not what a resumed job had done.
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Log lines written by the subscriber under test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The JSON records a run of `body` logs, as the binary formats them.
    fn json_logs(body: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, body);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains('\r'), "{text}");
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn off_a_terminal_progress_is_a_log_event_every_few_seconds() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let logs = json_logs(|| {
            // Resumed after 100 rows, 1,000 expected.
            let mut progress = Progress::with_output("bulkload", Output::Log, Some(1000), 100, t0);
            progress.advance_at(100, at(1));
            progress.advance_at(150, t0 + LOG_EVERY);
            progress.advance_at(50, t0 + LOG_EVERY + Duration::from_secs(1));
            progress.advance_at(200, t0 + LOG_EVERY * 2);
            progress.finish_at(t0 + LOG_EVERY * 2);
        });
        assert_eq!(logs.len(), 3, "{logs:#?}");
        let fields = |n: usize, name: &str| logs[n][name].clone();
        // 250 rows in this run's 5 s: 50 rows/s, 650 to go.
        assert_eq!(fields(0, "message"), "progress");
        assert_eq!(fields(0, "job"), "bulkload");
        assert_eq!(fields(0, "rows"), 350);
        assert_eq!(fields(0, "rate"), 50);
        assert_eq!(fields(0, "eta"), 13);
        assert_eq!(fields(0, "total"), 1000);
        // 500 rows in 10 s: 50 rows/s, 400 to go.
        assert_eq!(fields(1, "rows"), 600);
        assert_eq!(fields(1, "eta"), 8);
        assert_eq!(fields(2, "message"), "progress: run ended");
        assert_eq!(fields(2, "rows"), 600);
        assert_eq!(fields(2, "seconds"), 10);
    }

    #[test]
    fn without_a_total_there_is_no_eta_and_quiet_logs_nothing() {
        let t0 = Instant::now();
        let logs = json_logs(|| {
            let mut progress = Progress::with_output("backfill", Output::Log, None, 0, t0);
            progress.advance_at(40, t0 + LOG_EVERY);
            let mut quiet = Progress::with_output("backfill", Output::Off, None, 0, t0);
            quiet.advance_at(40, t0 + LOG_EVERY);
            quiet.finish_at(t0 + LOG_EVERY);
        });
        assert_eq!(logs.len(), 1, "{logs:#?}");
        assert_eq!(logs[0]["rate"], 8);
        assert!(logs[0].get("eta").is_none(), "{logs:#?}");
        assert!(logs[0].get("total").is_none(), "{logs:#?}");
    }
}
