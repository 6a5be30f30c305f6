//! The audit trail read as a stream of events: each event's level, the
//! filters an SRE sets, and reading it forward from a cursor without losing
//! an event whose insert committed after a later one's.

use super::{Clock, EventPage, Millis, Result, SecurityEvent, Store};
use std::sync::Arc;

/// Rows read per query while paging through the trail.
const PAGE: u32 = 500;
/// The most rows read back to find a backlog that matches a narrow filter.
const MAX_BACKLOG_SCAN: usize = 20_000;
/// A gap in the ids younger than this may be an insert not yet committed:
/// the tail waits for it rather than stepping past it. Older gaps are ids
/// that were never used (a rolled-back insert).
const GAP_GRACE_MS: Millis = 3_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }
}

/// Admin calls that only read: frequent (a console polls them), so debug.
const READ_ONLY_CALLS: &[&str] = &[
    "rpc=GetPhase ",
    "rpc=WatchPhase ",
    "rpc=PhaseHistory ",
    "rpc=CheckPhase ",
    "rpc=WhoAmI ",
    "rpc=TailEvents ",
    "rpc=FleetTraffic ",
];

/// How much an event matters to the SRE watching the tail.
pub fn level_of(kind: &str, detail: &str) -> Level {
    // An admin call's reason comes last and is free text: not read here.
    let fields = detail.split(" reason=").next().unwrap_or_default();
    match kind {
        "admin_call" if !fields.split(' ').any(|field| field == "outcome=ok") => Level::Warn,
        "admin_call" if READ_ONLY_CALLS.iter().any(|call| fields.contains(call)) => Level::Debug,
        "refresh_token_reuse"
        | "shadow_mismatch"
        | "phase_refused"
        | "login_anomaly"
        | "login_autoblock" => Level::Warn,
        "phase_change" if detail.contains(" forced=true ") => Level::Warn,
        _ => Level::Info,
    }
}

/// What an SRE asked to see.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Empty: every kind.
    pub kinds: Vec<String>,
    pub min_level: Option<Level>,
    /// Lower case; matched against the kind and the detail.
    pub text: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, kind: &str, level: Level, detail: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
            && self.min_level.is_none_or(|min| level >= min)
            && self.text.as_deref().is_none_or(|text| {
                kind.to_lowercase().contains(text) || detail.to_lowercase().contains(text)
            })
    }

    fn admits(&self, event: &SecurityEvent) -> bool {
        self.matches(
            &event.kind,
            level_of(&event.kind, &event.detail),
            &event.detail,
        )
    }
}

/// The audit trail, read as the event tail reads it.
pub struct AuditTrail {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl AuditTrail {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Records an event now.
    pub async fn record(&self, kind: &str, member: Option<i64>, detail: &str) -> Result<()> {
        let detail: String = detail.chars().take(1000).collect();
        self.store
            .record_security_event(kind, member, &detail, self.clock.now_ms())
            .await?;
        Ok(())
    }

    /// The newest `count` events that match, oldest first, and the cursor
    /// to follow on from: the newest stored event's, matching or not.
    pub async fn recent(
        &self,
        filter: &EventFilter,
        count: usize,
    ) -> Result<(Vec<SecurityEvent>, u64)> {
        let mut found = Vec::new();
        let mut before = i64::MAX;
        let mut cursor = None;
        let mut scanned = 0;
        while found.len() < count && scanned < MAX_BACKLOG_SCAN {
            let page = self
                .store
                .security_events_page(EventPage::Before {
                    id: before,
                    limit: PAGE,
                })
                .await?;
            let Some(oldest) = page.last() else { break };
            before = oldest.id;
            scanned += page.len();
            cursor = cursor.or(page.first().map(|e| e.id));
            found.extend(page.into_iter().filter(|e| filter.admits(e)));
        }
        found.truncate(count);
        found.reverse();
        Ok((found, cursor.map_or(0, cursor_of)))
    }

    /// The events after `cursor` that match, oldest first, and the cursor
    /// to read on from. Stops before a young gap in the ids (see
    /// [`GAP_GRACE_MS`]), so an event committed late is still delivered.
    pub async fn after(
        &self,
        cursor: u64,
        filter: &EventFilter,
    ) -> Result<(Vec<SecurityEvent>, u64)> {
        let now = self.clock.now_ms();
        let mut next = cursor;
        let mut found = Vec::new();
        loop {
            let page = self
                .store
                .security_events_page(EventPage::After {
                    id: i64::try_from(next).unwrap_or(i64::MAX),
                    limit: PAGE,
                })
                .await?;
            let full = page.len() == PAGE as usize;
            for event in page {
                let id = cursor_of(event.id);
                let gap = id != next + 1;
                if gap && now - event.at < GAP_GRACE_MS {
                    return Ok((found, next));
                }
                next = id;
                if filter.admits(&event) {
                    found.push(event);
                }
            }
            if !full {
                return Ok((found, next));
            }
        }
    }
}

fn cursor_of(id: i64) -> u64 {
    u64::try_from(id).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters() {
        assert_eq!(
            level_of("admin_call", "who=a rpc=GetPhase outcome=ok"),
            Level::Debug
        );
        assert_eq!(
            level_of("admin_call", "who=a rpc=SetPhase outcome=ok"),
            Level::Info
        );
        assert_eq!(
            level_of("admin_call", "who=- rpc=GetPhase outcome=Unauthenticated"),
            Level::Warn
        );
        assert_eq!(level_of("refresh_token_reuse", ""), Level::Warn);
        let filter = EventFilter {
            kinds: vec!["admin_call".into()],
            min_level: Some(Level::Info),
            text: Some("setphase".into()),
        };
        assert!(filter.matches("admin_call", Level::Info, "who=a rpc=SetPhase outcome=ok"));
        assert!(!filter.matches("admin_call", Level::Debug, "who=a rpc=SetPhase outcome=ok"));
        assert!(!filter.matches("phase_change", Level::Info, "SetPhase"));
        assert!(!filter.matches("admin_call", Level::Warn, "who=a rpc=GetPhase"));
    }
}
