//! Shadow reads (phases 1–3): a sampled share of the logins and `me` reads
//! legacy serves is repeated against idsvc after legacy has answered, and
//! compared there (`Identity.ShadowRead`, which changes nothing: no
//! session, no throttle count, no re-hash). The client's response is
//! legacy's, untouched: a shadow runs on its own task, with at most
//! `--shadow-concurrency` at a time; one that finds no room is dropped and
//! counted, as is one idsvc drops because its password hashing is busy.
//!
//! A first comparison that differs is made again `--shadow-recheck-ms`
//! later: only a difference that persists is a mismatch (a double write
//! in flight is not). idsvc counts shadows and mismatches for the
//! shadow-agreement check and samples mismatches into the audit trail.
//!
//! Sampling is per member for logins (a keyed hash of the normalised
//! email, with the fleet's ramp key, so every gateway picks the same
//! members) and per session for `me` reads (legacy's tokens are opaque:
//! the member is known only from legacy's answer; each gateway keys that
//! hash itself).

use super::Ramp;
use crate::upstream::{Retry, Upstream};
use axum::body::{Body, Bytes};
use axum::response::Response;
use http::StatusCode;
use http_body::Frame;
use idbase_proto::v1 as pb;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use zeroize::Zeroizing;

pub const DEFAULT_SHADOW_PERCENT: f64 = 1.0;
/// Shadows in flight per gateway, waiting for their batch included: two
/// full batches. Each holds a read's few hundred bytes.
pub const DEFAULT_SHADOW_CONCURRENCY: u32 = 512;
/// Long enough for a double write in flight to land (legacy writes idbase
/// before it answers, so this is a request's time plus replication).
pub const DEFAULT_SHADOW_RECHECK_MS: u64 = 3000;
/// A `me` answer is a few hundred bytes; a larger one is not compared.
const MAX_COMPARED_BODY: usize = 8 * 1024;
/// How long a shadow waits for the rest of legacy's `me` body.
const BODY_WAIT: Duration = Duration::from_secs(10);
/// Reads per `ShadowReads` call, at most (idsvc's limit).
const MAX_BATCH: usize = 256;
/// How long the first read of a batch waits for others.
const BATCH_WAIT: Duration = Duration::from_millis(20);

/// `idbase gateway` flags for shadow reads.
#[derive(Clone, Debug, clap::Args)]
pub struct ShadowArgs {
    /// Percent of the logins and `me` reads legacy serves in phases 1–3 that
    /// are repeated against idsvc and compared (0 disables).
    #[arg(long, env = "IDBASE_SHADOW_PERCENT", default_value_t = DEFAULT_SHADOW_PERCENT,
          value_parser = percent)]
    pub shadow_percent: f64,
    /// Shadow reads in flight at most; more are dropped (counted).
    #[arg(long, env = "IDBASE_SHADOW_CONCURRENCY", default_value_t = DEFAULT_SHADOW_CONCURRENCY,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shadow_concurrency: u32,
    /// A shadow whose comparison differs is compared again this many
    /// milliseconds later; only a difference that persists is a mismatch.
    #[arg(long, env = "IDBASE_SHADOW_RECHECK_MS", default_value_t = DEFAULT_SHADOW_RECHECK_MS,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub shadow_recheck_ms: u64,
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err("a percentage from 0 to 100".to_owned()),
    }
}

impl ShadowArgs {
    /// `None` when shadows are off.
    pub fn shadows(&self) -> Option<Arc<Shadows>> {
        (self.shadow_percent > 0.0).then(|| {
            Arc::new(Shadows::new(
                self.shadow_percent,
                self.shadow_concurrency as usize,
                Duration::from_millis(self.shadow_recheck_ms),
            ))
        })
    }
}

/// The gateway's shadow reads.
pub struct Shadows {
    per_million: u64,
    permits: Arc<Semaphore>,
    recheck: Duration,
    /// Keys the `me` reads' sampling.
    sessions: std::hash::RandomState,
    queue: mpsc::UnboundedSender<Queued>,
    /// Taken by the first shadow, which starts the batcher (it needs the
    /// runtime and the upstream).
    batcher: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
}

/// A sampled read with its place among the shadows in flight.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// A read waiting for its batch; it holds its slot until it is settled.
struct Queued {
    read: pb::shadow_read::Read,
    recheck: bool,
    /// Held, not read: the read's place among the shadows in flight.
    _slot: Slot,
}

impl Queued {
    fn kind(&self) -> &'static str {
        match self.read {
            pb::shadow_read::Read::Login(_) => "login",
            pb::shadow_read::Read::Me(_) => "me",
        }
    }
}

impl Shadows {
    pub fn new(percent: f64, concurrency: usize, recheck: Duration) -> Self {
        let (queue, batcher) = mpsc::unbounded_channel();
        Self {
            // Whole parts per million: 0.0001% is the finest share.
            per_million: (percent * 10_000.0).round() as u64,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            recheck,
            sessions: std::hash::RandomState::new(),
            queue,
            batcher: Mutex::new(Some(batcher)),
        }
    }

    /// Whether a login, keyed by its normalised email, is shadowed, and
    /// its slot: the fleet's ramp key decides, so a member is shadowed on
    /// every gateway or on none.
    pub fn sample_login(&self, ramp: &Ramp, email: &str) -> Option<Slot> {
        self.slot_if(ramp.sample_bucket(email), "login")
    }

    /// Whether a `me` read, keyed by its token, is shadowed, and its slot.
    /// Every `me` read legacy serves pays for this, so it is this process's
    /// SipHash rather than the fleet's HMAC: a session's reads may be
    /// shadowed on one gateway and not another, which sampling allows.
    pub fn sample_me(&self, token: &str) -> Option<Slot> {
        self.slot_if(self.sessions.hash_one(token) % 1_000_000, "me")
    }

    /// A sampled read (its bucket below the share) without room is dropped
    /// and counted.
    fn slot_if(&self, bucket: u64, kind: &'static str) -> Option<Slot> {
        if bucket >= self.per_million {
            return None;
        }
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Some(Slot { _permit: permit }),
            Err(_) => {
                counted(kind, "dropped");
                None
            }
        }
    }

    /// Shadows a login legacy answered (200 accepted, 401 refused; any
    /// other answer says nothing about the credentials).
    pub fn login(
        self: &Arc<Self>,
        slot: Slot,
        upstream: &Upstream,
        (email, password): (String, Zeroizing<String>),
        legacy_status: StatusCode,
    ) {
        let legacy_accepted = match legacy_status {
            StatusCode::OK => true,
            StatusCode::UNAUTHORIZED => false,
            _ => return,
        };
        let read = pb::shadow_read::Read::Login(pb::ShadowLogin {
            email,
            password: password.to_string(),
            legacy_accepted,
        });
        self.enqueue(upstream, read, slot);
    }

    /// Shadows a `me` read: the response is passed on untouched, its body
    /// copied on the way; the comparison is queued once it has all gone by.
    pub fn me(self: &Arc<Self>, slot: Slot, upstream: &Upstream, response: Response) -> Response {
        if response.status() != StatusCode::OK {
            return response;
        }
        let (parts, body) = response.into_parts();
        let (sent, copied) = oneshot::channel();
        let tee = Tee {
            inner: body,
            copy: Vec::new(),
            done: Some(sent),
        };
        let (shadows, upstream) = (Arc::clone(self), upstream.clone());
        tokio::spawn(async move {
            let Ok(Ok(body)) = tokio::time::timeout(BODY_WAIT, copied).await else {
                return;
            };
            match me_read(&body) {
                Some(read) => shadows.enqueue(&upstream, read, slot),
                None => counted("me", "unreadable"),
            }
        });
        Response::from_parts(parts, Body::new(tee))
    }

    fn enqueue(self: &Arc<Self>, upstream: &Upstream, read: pb::shadow_read::Read, slot: Slot) {
        let batcher = self
            .batcher
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(batcher) = batcher {
            tokio::spawn(batch(Arc::downgrade(self), batcher, upstream.clone()));
        }
        let queued = Queued {
            read,
            recheck: false,
            _slot: slot,
        };
        // The batcher ends only after the last `Shadows`, which is here.
        let _ = self.queue.send(queued);
    }

    /// Sends one batch and settles each read: agreed, dropped, failed, or
    /// (a first comparison that differs) queued again after the re-check delay.
    async fn compare(self: Arc<Self>, batch: Vec<Queued>, upstream: Upstream) {
        let request = pb::ShadowReadsRequest {
            reads: batch
                .iter()
                .map(|queued| pb::ShadowRead {
                    read: Some(queued.read.clone()),
                    recheck: queued.recheck,
                })
                .collect(),
        };
        let answer = upstream
            .call(
                Retry::Unsafe,
                "shadow-reads",
                request,
                |mut c, r| async move { c.shadow_reads(r).await },
            )
            .await;
        let results = match answer {
            Ok(answer) if answer.results.len() == batch.len() => answer.results,
            _ => {
                for queued in &batch {
                    counted(queued.kind(), "failed");
                }
                return;
            }
        };
        for (queued, result) in batch.into_iter().zip(results) {
            let kind = queued.kind();
            match (
                result.dropped,
                result.differences.is_empty(),
                queued.recheck,
            ) {
                (true, ..) => counted(kind, "dropped"),
                (false, true, false) => counted(kind, "match"),
                (false, true, true) => counted(kind, "transient"),
                (false, false, true) => counted(kind, "mismatch"),
                (false, false, false) => {
                    metrics::counter!("idbase_gateway_shadow_rechecks_total", "kind" => kind)
                        .increment(1);
                    let shadows = Arc::clone(&self);
                    tokio::spawn(async move {
                        tokio::time::sleep(shadows.recheck).await;
                        let again = Queued {
                            recheck: true,
                            ..queued
                        };
                        let _ = shadows.queue.send(again);
                    });
                }
            }
        }
    }
}

/// Gathers queued reads into calls of up to [`MAX_BATCH`], each sent once
/// the first read of it has waited [`BATCH_WAIT`]: one call per batch
/// instead of one per read is what keeps shadows cheap. Holds the shadows
/// weakly, so that it ends with the gateway's state.
async fn batch(
    shadows: Weak<Shadows>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    upstream: Upstream,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(queued)) => batch.push(queued),
                Ok(None) | Err(_) => break,
            }
        }
        let Some(shadows) = shadows.upgrade() else {
            return;
        };
        tokio::spawn(shadows.compare(batch, upstream.clone()));
    }
}

/// `idbase_gateway_shadow_reads_total`: match, mismatch, transient (a
/// difference gone on the re-check), dropped, failed, unreadable.
fn counted(kind: &'static str, outcome: &'static str) {
    metrics::counter!("idbase_gateway_shadow_reads_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
}

/// The member in legacy's `me` answer (idbase's shape: `id` a decimal
/// string, `email`, `phone` or null).
fn me_read(body: &[u8]) -> Option<pb::shadow_read::Read> {
    #[derive(serde::Deserialize)]
    struct Me {
        id: String,
        email: String,
        phone: Option<String>,
    }
    let me: Me = serde_json::from_slice(body).ok()?;
    Some(pb::shadow_read::Read::Me(pb::ShadowMe {
        member_id: me.id.parse().ok()?,
        email: me.email,
        phone: me.phone,
    }))
}

/// A response body passed on frame by frame, unchanged, while a copy (up
/// to [`MAX_COMPARED_BODY`]) goes to the shadow once the body has ended.
struct Tee {
    inner: Body,
    copy: Vec<u8>,
    /// Gone once sent, or when the copy would be too large or incomplete.
    done: Option<oneshot::Sender<Bytes>>,
}

impl Tee {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Bytes::from(std::mem::take(&mut self.copy)));
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if self.copy.len() + data.len() > MAX_COMPARED_BODY {
                        self.done = None;
                    } else if self.done.is_some() {
                        self.copy.extend_from_slice(data);
                    }
                }
                // A body of known length may not be polled past its end.
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Some(Err(_)) => self.done = None,
            None => self.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_teed_body_reaches_the_client_unchanged_and_the_shadow_whole() {
        let (sent, copied) = oneshot::channel();
        let body = Body::from(r#"{"id":"7","email":"a@example.com","phone":null}"#);
        let tee = Tee {
            inner: body,
            copy: Vec::new(),
            done: Some(sent),
        };
        let client = Body::new(tee).collect().await.unwrap().to_bytes();
        assert_eq!(
            &client[..],
            br#"{"id":"7","email":"a@example.com","phone":null}"#
        );
        assert_eq!(copied.await.unwrap(), client);
        let Some(pb::shadow_read::Read::Me(me)) = me_read(&client) else {
            panic!("not read");
        };
        assert_eq!((me.member_id, me.phone), (7, None));
    }

    #[tokio::test]
    async fn a_body_too_large_to_compare_still_reaches_the_client() {
        let (sent, copied) = oneshot::channel();
        let large = vec![b'x'; MAX_COMPARED_BODY + 1];
        let tee = Tee {
            inner: Body::from(large.clone()),
            copy: Vec::new(),
            done: Some(sent),
        };
        let client = Body::new(tee).collect().await.unwrap().to_bytes();
        assert_eq!(client.len(), large.len());
        assert!(copied.await.is_err());
    }

    #[test]
    fn sampling_takes_the_configured_share_and_drops_without_room() {
        let ramp = Ramp::new(b"fleet ramp key");
        let shadows = Shadows::new(10.0, 1, Duration::ZERO);
        let sampled: Vec<Slot> = (0..10_000)
            .filter_map(|n| shadows.sample_login(&ramp, &format!("m{n}@example.com")))
            .collect();
        // One slot: the first sampled member holds it, every later one is dropped.
        assert_eq!(sampled.len(), 1);
        let shadows = Shadows::new(10.0, 10_000, Duration::ZERO);
        let logins = (0..10_000)
            .filter_map(|n| shadows.sample_login(&ramp, &format!("m{n}@example.com")))
            .count();
        assert!((800..1200).contains(&logins), "{logins} of 10,000 at 10%");
        let reads = (0..10_000)
            .filter_map(|n| shadows.sample_me(&format!("la_token{n}")))
            .count();
        assert!((800..1200).contains(&reads), "{reads} of 10,000 at 10%");
        let none = Shadows::new(0.0, 10, Duration::ZERO);
        assert!(none.sample_me("anyone").is_none());
    }
}
