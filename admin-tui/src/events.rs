//! `idbase admin events`: the audit and security events (and, with
//! `--logs`, idsvc's own log lines) as lines for people or JSON lines for
//! machines. `--follow` keeps the stream open and, when it breaks, resumes
//! from the last event's cursor: nothing stored is lost or printed twice.

use crate::client::Client;
use crate::failure::{Exit, Failure};
use crate::output::timestamp;
use idbase_proto::v1::{AdminEvent, TailEventsRequest};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;
use tonic::Code;

/// The longest wait between two attempts to resume a broken stream.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

#[derive(Clone, Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep the stream open and print events as they happen (resuming by
    /// itself after a broken connection).
    #[arg(long)]
    pub follow: bool,
    /// Only this kind (e.g. `admin_call`, `phase_change`, `login_anomaly`,
    /// `log`); repeat for several.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only events at this level or above.
    #[arg(long, value_parser = ["debug", "info", "warn", "error"])]
    pub level: Option<String>,
    /// Only events whose kind or detail contains this text (case-insensitive).
    #[arg(long)]
    pub text: Option<String>,
    /// Start after this cursor (the `#…` of an event printed before).
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<u64>,
    /// Without `--since`: how many recent events to start with.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub backlog: u32,
    /// With `--follow`: idsvc's own log lines too (live only, best-effort).
    #[arg(long, requires = "follow")]
    pub logs: bool,
}

/// One event on one line: time, level, kind, member, detail and cursor.
pub fn line(e: &AdminEvent) -> String {
    let member = e
        .member_id
        .map_or_else(String::new, |id| format!(" member={id}"));
    let origin = if e.cursor > 0 {
        format!("  #{}", e.cursor)
    } else {
        format!("  [{}]", e.pod)
    };
    format!(
        "{}  {:<5}  {}{member}  {}{origin}",
        timestamp(e.at),
        e.level,
        e.kind,
        e.detail
    )
}

#[derive(Serialize)]
pub struct EventJson<'a> {
    /// 0 for live log lines.
    cursor: u64,
    at: String,
    at_ms: i64,
    level: &'a str,
    kind: &'a str,
    member_id: Option<i64>,
    detail: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod: &'a str,
}

impl<'a> From<&'a AdminEvent> for EventJson<'a> {
    fn from(e: &'a AdminEvent) -> Self {
        Self {
            cursor: e.cursor,
            at: timestamp(e.at),
            at_ms: e.at,
            level: &e.level,
            kind: &e.kind,
            member_id: e.member_id,
            detail: &e.detail,
            pod: &e.pod,
        }
    }
}

/// Prints events to `out` until the stream ends (or, following, until the
/// process is stopped); `err` hears about reconnects and skipped log lines.
pub async fn run(
    args: EventsArgs,
    mut client: Client,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<Exit, Failure> {
    let mut cursor = args.since;
    let mut backoff = Duration::from_millis(500);
    loop {
        let request = TailEventsRequest {
            after: cursor,
            backlog: args.backlog,
            follow: args.follow,
            kinds: args.kinds.clone(),
            min_level: args.level.clone().unwrap_or_default(),
            text: args.text.clone().unwrap_or_default(),
            logs: args.logs,
        };
        // No per-call time limit: a followed stream lasts as long as wanted.
        let broke = match client.admin.tail_events(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            backoff = Duration::from_millis(500);
                            if message.skipped_logs > 0 {
                                let _ = writeln!(
                                    err,
                                    "idbase admin: {} log lines skipped (idsvc's live log outran \
                                     this stream)",
                                    message.skipped_logs
                                );
                            }
                            for event in &message.events {
                                let text = if json {
                                    serde_json::to_string(&EventJson::from(event))
                                        .unwrap_or_default()
                                } else {
                                    line(event)
                                };
                                if writeln!(out, "{text}").is_err() {
                                    // The reader went away (`| head`): done.
                                    return Ok(Exit::Ok);
                                }
                                if event.cursor > 0 {
                                    cursor = Some(event.cursor);
                                }
                            }
                            let _ = out.flush();
                        }
                        Ok(None) if !args.follow => return Ok(Exit::Ok),
                        Ok(None) => break Failure::unreachable("idsvc ended the event stream"),
                        Err(status) => break Failure::from(status),
                    }
                }
            }
            Err(status) => Failure::from(status),
        };
        // Only a broken connection is worth another try, and only when following.
        let retry = args.follow
            && matches!(broke.exit, Exit::Unreachable)
            && broke.grpc_code != Some(Code::DeadlineExceeded);
        if !retry {
            return Err(broke);
        }
        let _ = writeln!(
            err,
            "idbase admin: {}; resuming in {:.1} s",
            broke.message,
            backoff.as_secs_f64()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
