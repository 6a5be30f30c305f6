//! The process's own log lines, offered live to the admin event tail
//! (`TailEvents` with `logs`): a tracing layer that copies each line into a
//! bounded broadcast channel when someone is listening, and costs one atomic
//! load when nobody is. Best-effort by design: a listener that falls behind
//! is told how many lines it missed; logging never waits for it.

use crate::domain::audit::Level;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Lines held for listeners that fall behind (at most this many, each at
/// most [`MAX_LINE_CHARS`]).
const BUFFER: usize = 4096;
const MAX_LINE_CHARS: usize = 1000;

/// One log line, as the event tail shows it.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Unix milliseconds.
    pub at: i64,
    pub level: Level,
    /// The module that logged it, then the message and its fields.
    pub text: String,
}

fn channel() -> &'static broadcast::Sender<Arc<LogLine>> {
    static LINES: OnceLock<broadcast::Sender<Arc<LogLine>>> = OnceLock::new();
    LINES.get_or_init(|| broadcast::channel(BUFFER).0)
}

/// Listens to this process's log lines from now on.
pub fn subscribe() -> broadcast::Receiver<Arc<LogLine>> {
    channel().subscribe()
}

/// The layer to add to the process's subscriber.
pub fn layer() -> LogTail {
    LogTail
}

pub struct LogTail;

impl<S: Subscriber> Layer<S> for LogTail {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let lines = channel();
        if lines.receiver_count() == 0 {
            return;
        }
        let metadata = event.metadata();
        let mut text = Text(format!("{}:", metadata.target()));
        event.record(&mut text);
        let mut text = text.0;
        if text.chars().count() > MAX_LINE_CHARS {
            text = text.chars().take(MAX_LINE_CHARS).collect();
            text.push('…');
        }
        let level = match *metadata.level() {
            tracing::Level::ERROR => Level::Error,
            tracing::Level::WARN => Level::Warn,
            tracing::Level::INFO => Level::Info,
            _ => Level::Debug,
        };
        let at = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let line = LogLine {
            at: i64::try_from(at).unwrap_or(i64::MAX),
            level,
            text,
        };
        // No listener left between the check and here: nothing to do.
        let _ = lines.send(Arc::new(line));
    }
}

/// `target: message key=value …`, the way the compact format reads.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// This replica's name: the pod's (Kubernetes sets the host name to it).
pub fn pod_name() -> &'static str {
    static POD: OnceLock<String> = OnceLock::new();
    POD.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "idsvc".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_reach_listeners_with_their_level_and_fields() {
        let mut lines = subscribe();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(member = 42, "phase watch lost");
        });
        let line = lines.try_recv().unwrap();
        assert_eq!(line.level, Level::Warn);
        assert!(
            line.text.ends_with("phase watch lost member=42"),
            "{}",
            line.text
        );
    }
}
