//! The listeners' HTTP server: HTTP/1.1 with the limits a proxy facing untrusted clients needs,
//! which `axum::serve` does not have.
//!
//! - **Header read**: a request's headers must be complete within `header_read_timeout` of its
//!   first byte (for a connection's first request: of the connection's opening), so a client
//!   sending a header line a second is cut off.
//! - **Idle**: a keep-alive connection with no request in progress is closed after
//!   `idle_timeout`. Longer than the header timeout on purpose: a load balancer in front keeps
//!   idle connections for a minute or so, and a server that closes first races its requests.
//! - **Write stall**: a client that reads nothing of its response for `idle_timeout` loses the
//!   connection (a slow reader would otherwise hold a stream, and an in-flight slot, forever).
//! - **Connections**: at most `max_connections` open; beyond, new ones wait in the kernel's
//!   accept backlog until one closes.
//!
//! The request body's own deadline (`--body-read-timeout`) and the bound on requests in flight
//! are the handlers' (`proxy`), since only they know when a body is being read.
//!
//! Timeouts hyper's `header_read_timeout` cannot give: it restarts when a keep-alive connection
//! goes idle, making the idle timeout and the header timeout one. So the connection's phase
//! (waiting, reading a head, busy with requests) is tracked here, by a service wrapper that
//! sees requests start and their response bodies end, and an IO wrapper that enforces the
//! phase's deadline. HTTP/2 (h2c) is not served: clients, ingress controllers and the OpenAI
//! SDKs speak HTTP/1.1 to this port, and one protocol keeps the limits simple.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::metrics::{Metrics, PhaseLabels};

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// What a connection is doing, which decides its read deadline.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No request in progress and no byte of the next one yet, since `since`.
    Waiting { since: Instant },
    /// The next request's head is arriving; its first byte came at `since`.
    Head { since: Instant },
    /// Requests in progress: their bodies and responses have their own deadlines.
    Busy,
}

/// Why a connection was closed by a deadline: the `phase` label of
/// `tailor_router_connection_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Header,
    Idle,
    Write,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
            Expired::Write => "write",
        }
    }
}

#[derive(Debug)]
struct ClockState {
    phase: Phase,
    /// Requests whose response body has not ended.
    active: usize,
    /// Requests finished on this connection.
    served: u64,
    /// The task waiting to read, woken when the phase (and so the deadline) changes.
    reader: Option<Waker>,
}

/// A connection's phase, shared by its IO and its service.
#[derive(Debug)]
struct Clock {
    limits: Limits,
    state: Mutex<ClockState>,
}

impl Clock {
    fn new(limits: Limits, now: Instant) -> Self {
        Clock {
            limits,
            state: Mutex::new(ClockState {
                phase: Phase::Waiting { since: now },
                active: 0,
                served: 0,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived while waiting: a request head has begun. A first request's clock started
    /// when the connection opened.
    fn bytes_read(&self, now: Instant) {
        let mut s = self.lock();
        if let Phase::Waiting { since } = s.phase {
            let since = if s.served == 0 { since } else { now };
            s.phase = Phase::Head { since };
        }
    }

    fn request_started(&self) {
        let mut s = self.lock();
        s.active += 1;
        s.phase = Phase::Busy;
    }

    fn request_ended(&self, now: Instant) {
        let mut s = self.lock();
        s.active = s.active.saturating_sub(1);
        s.served += 1;
        if s.active == 0 {
            s.phase = Phase::Waiting { since: now };
            if let Some(w) = s.reader.take() {
                w.wake();
            }
        }
    }

    /// The instant reading must have progressed by, and what expires then.
    fn read_deadline(&self, reader: &Waker) -> Option<(Instant, Expired)> {
        let mut s = self.lock();
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(reader)) {
            s.reader = Some(reader.clone());
        }
        deadline(s.phase, s.served, &self.limits)
    }
}

/// The read deadline of a phase: pure.
fn deadline(phase: Phase, served: u64, limits: &Limits) -> Option<(Instant, Expired)> {
    match phase {
        Phase::Waiting { since } if served == 0 => {
            Some((since + limits.header_read_timeout, Expired::Header))
        }
        Phase::Waiting { since } => Some((since + limits.idle_timeout, Expired::Idle)),
        Phase::Head { since } => Some((since + limits.header_read_timeout, Expired::Header)),
        Phase::Busy => None,
    }
}

/// The TCP stream with the phase's read deadline and the write-stall deadline.
struct DeadlineIo {
    inner: TcpStream,
    clock: Arc<Clock>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    /// When the current run of refused writes began.
    write_stalled_since: Option<Instant>,
    timeouts: Family<PhaseLabels, Counter>,
}

impl DeadlineIo {
    fn expire(&self, what: Expired) -> io::Error {
        self.timeouts
            .get_or_create(&PhaseLabels {
                phase: what.label().to_string(),
            })
            .inc();
        tracing::debug!(
            phase = what.label(),
            "closing a connection past its deadline"
        );
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection {} timeout", what.label()),
        )
    }

    /// Polls a write, failing once writes have been refused for the idle timeout.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match write(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write_stalled_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let now = Instant::now();
                let since = *self.write_stalled_since.get_or_insert(now);
                let at = since + self.clock.limits.idle_timeout;
                if now >= at {
                    return Poll::Ready(Err(self.expire(Expired::Write)));
                }
                if self.write_timer.deadline() != at {
                    self.write_timer.as_mut().reset(at);
                }
                if self.write_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(self.expire(Expired::Write)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncRead for DeadlineIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let deadline = this.clock.read_deadline(cx.waker());
        let now = Instant::now();
        // Checked before reading too: a client trickling bytes never leaves the read pending.
        if let Some((at, what)) = deadline
            && now >= at
        {
            return Poll::Ready(Err(this.expire(what)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_read(now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((at, what)) = deadline else {
                    return Poll::Pending;
                };
                if this.read_timer.deadline() != at {
                    this.read_timer.as_mut().reset(at);
                }
                if this.read_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.expire(what)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for DeadlineIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks its request ended when dropped: with the response body, at its end or when the
/// client goes away.
struct RequestGuard {
    clock: Arc<Clock>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.clock.request_ended(Instant::now());
    }
}

/// A response body carrying its request's guard.
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the open connections to finish their requests (idle ones close at once).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: &Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open: Gauge = metrics.open_connections.clone();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(Clock::new(limits, Instant::now()));
        let io = DeadlineIo {
            inner: stream,
            clock: clock.clone(),
            read_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            write_timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            write_stalled_since: None,
            timeouts: metrics.connection_timeouts.clone(),
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            clock.request_started();
            let guard = RequestGuard {
                clock: clock.clone(),
            };
            let app = app.clone();
            async move {
                let response = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|inner| GuardedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(io), service);
        let conn = graceful.watch(conn);
        let open = open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(90),
        max_connections: 1,
    };

    #[test]
    fn deadlines_by_phase() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        // A new connection: its first request's head is due 10 s after it opened.
        assert_eq!(
            deadline(Phase::Waiting { since: t0 }, 0, &LIMITS),
            Some((s(10), Expired::Header))
        );
        // Between requests: idle for up to 90 s.
        assert_eq!(
            deadline(Phase::Waiting { since: t0 }, 3, &LIMITS),
            Some((s(90), Expired::Idle))
        );
        assert_eq!(
            deadline(Phase::Head { since: t0 }, 3, &LIMITS),
            Some((s(10), Expired::Header))
        );
        assert_eq!(deadline(Phase::Busy, 3, &LIMITS), None);
    }

    #[test]
    fn phases_follow_requests() {
        let t0 = Instant::now();
        let clock = Clock::new(LIMITS, t0);
        let waker = futures::task::noop_waker();
        // The first request's head keeps the connection's opening as its start.
        clock.bytes_read(t0 + Duration::from_secs(4));
        assert_eq!(
            clock.read_deadline(&waker),
            Some((t0 + Duration::from_secs(10), Expired::Header))
        );
        clock.request_started();
        clock.request_started();
        assert_eq!(clock.read_deadline(&waker), None);
        clock.request_ended(t0 + Duration::from_secs(20));
        assert_eq!(clock.read_deadline(&waker), None, "one still in progress");
        clock.request_ended(t0 + Duration::from_secs(30));
        assert_eq!(
            clock.read_deadline(&waker),
            Some((t0 + Duration::from_secs(120), Expired::Idle))
        );
        // The next request's head starts its own clock.
        clock.bytes_read(t0 + Duration::from_secs(50));
        assert_eq!(
            clock.read_deadline(&waker),
            Some((t0 + Duration::from_secs(60), Expired::Header))
        );
    }
}
