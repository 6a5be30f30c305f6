//! One connection's phase and deadline, and the I/O wrapper that moves it
//! from idle to reading a request head when the client starts sending.
//!
//! Phases: `Head` (reading a request head: the header timeout runs), `Busy`
//! (a request is being served: no deadline), `Idle` (kept alive between
//! requests: the idle timeout runs). A new HTTP/1 connection starts in `Head`,
//! so a client that connects and sends nothing, or trickles its headers, is
//! cut when the header timeout passes, however slowly bytes keep coming. An
//! HTTP/2 connection multiplexes requests and sends control frames while
//! idle, so once its preface is seen only `Idle` and `Busy` apply to it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The HTTP/2 client connection preface starts with this.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Head,
    Busy,
    Idle,
}

impl Phase {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Head,
            1 => Self::Busy,
            _ => Self::Idle,
        }
    }
}

/// Shared by the connection's task, its I/O, its requests and the registry.
pub struct ConnState {
    epoch: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: AtomicU8,
    /// Milliseconds after `epoch` when the current phase runs out.
    deadline_ms: AtomicU64,
    in_flight: AtomicUsize,
    h2: AtomicBool,
    first_read: AtomicBool,
    /// Woken when the deadline moves earlier or the phase changes.
    pub changed: Notify,
    /// Cancelled when the registry sheds this connection to make room.
    pub shed: CancellationToken,
    shedding: AtomicBool,
}

impl ConnState {
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Self {
        let state = Self {
            epoch: Instant::now(),
            header_timeout,
            idle_timeout,
            phase: AtomicU8::new(Phase::Head as u8),
            deadline_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            first_read: AtomicBool::new(true),
            changed: Notify::new(),
            shed: CancellationToken::new(),
            shedding: AtomicBool::new(false),
        };
        state.enter(Phase::Head);
        state
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: Phase) {
        let timeout = match phase {
            Phase::Head => self.header_timeout,
            Phase::Idle => self.idle_timeout,
            Phase::Busy => Duration::ZERO,
        };
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.deadline_ms
            .store(self.now_ms().saturating_add(timeout_ms), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
        self.changed.notify_one();
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// When the current phase runs out; `None` while a request is served.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Busy => None,
            _ => Some(self.epoch + Duration::from_millis(self.deadline_ms.load(Ordering::Acquire))),
        }
    }

    /// Marks the connection as HTTP/2 (negotiated by ALPN, or its preface seen).
    pub fn set_h2(&self) {
        if !self.h2.swap(true, Ordering::AcqRel) && self.phase() == Phase::Head {
            self.enter(Phase::Idle);
        }
    }

    /// A request starts; the returned guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.phase.store(Phase::Busy as u8, Ordering::Release);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Claims this connection for shedding; false if already claimed.
    pub fn claim_for_shedding(&self) -> bool {
        !self.shedding.swap(true, Ordering::AcqRel)
    }

    fn on_read(&self, bytes: &[u8]) {
        if self.first_read.swap(false, Ordering::AcqRel) && bytes.starts_with(H2_PREFACE) {
            self.set_h2();
            return;
        }
        if !self.h2.load(Ordering::Acquire) && self.phase() == Phase::Idle {
            self.enter(Phase::Head);
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.enter(Phase::Idle);
        }
    }
}

/// A connection's I/O that reports reads to its [`ConnState`].
pub struct Tracked<IO> {
    io: IO,
    state: Arc<ConnState>,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO, state: Arc<ConnState>) -> Self {
        Self { io, state }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
