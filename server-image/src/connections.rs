//! Accepting and serving connections (HTTP/1.1 on hyper), within limits a slow or hostile client
//! cannot stretch:
//! - at most `--max-connections` open at once (beyond it, new ones wait in the listen queue);
//! - a request's headers must arrive within `--header-read-timeout` of its first byte;
//! - a connection with no request in flight and no bytes for `--idle-timeout` is closed;
//! - request bodies are bounded in time by the JSON extractor (`--body-read-timeout`).
//!
//! A small watchdog per connection decides from what the connection did ([`verdict`], pure):
//! bytes read are seen through [`Tracked`], requests in flight through a guard that lives until
//! the response body is sent. Shutdown stops accepting and lets each connection finish its
//! in-flight request (hyper's graceful shutdown).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

/// What one connection has been doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnState {
    /// Requests whose response is not fully sent.
    pub in_flight: usize,
    /// When the connection last became idle (opened, or its last response ended).
    pub idle_since: Instant,
    /// The first byte of a request not yet dispatched, if one arrived.
    pub head_started: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// No request and no bytes for `idle`.
    CloseIdle,
    /// A request's headers did not arrive within `header_read` of its first byte.
    CloseSlowHeaders,
}

/// The watchdog's decision.
pub fn verdict(s: &ConnState, now: Instant, limits: &Limits) -> Verdict {
    if s.in_flight > 0 {
        return Verdict::Keep;
    }
    match s.head_started {
        Some(t) if now.saturating_duration_since(t) >= limits.header_read => {
            Verdict::CloseSlowHeaders
        }
        Some(_) => Verdict::Keep,
        None if now.saturating_duration_since(s.idle_since) >= limits.idle => Verdict::CloseIdle,
        None => Verdict::Keep,
    }
}

#[derive(Debug)]
struct Activity(Mutex<ConnState>);

impl Activity {
    fn new() -> Self {
        Self(Mutex::new(ConnState {
            in_flight: 0,
            idle_since: Instant::now(),
            head_started: None,
        }))
    }

    fn with<R>(&self, f: impl FnOnce(&mut ConnState) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    fn bytes_read(&self) {
        self.with(|s| {
            if s.in_flight == 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
        });
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.with(|s| {
            s.in_flight += 1;
            s.head_started = None;
        });
        InFlight(self.clone())
    }
}

/// A request in flight on a connection, until its response body has been sent (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.with(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
            }
        });
    }
}

/// The socket, with reads reported to the connection's [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How often a connection's watchdog looks.
fn check_interval(limits: &Limits) -> Duration {
    (limits.header_read.min(limits.idle) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// Serves `app` on `listener` until `shutdown` turns true, then waits for every connection to
/// finish its in-flight request.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let mut stop = shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        tracker.spawn(connection(
            stream,
            app.clone(),
            limits,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_flight = requests.request_started();
        let app = app.clone();
        async move {
            let response = app.oneshot(req).await?;
            // The guard lives as long as the body: until hyper has sent the last byte.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                }))
            }))
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .max_headers(100)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let tick = check_interval(&limits);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick) => {
                let v = activity.with(|s| verdict(s, Instant::now(), &limits));
                if v != Verdict::Keep {
                    tracing::debug!(verdict = ?v, "closing connection");
                    // Dropping the connection closes the socket.
                    return;
                }
            }
            _ = shutdown.wait_for(|s| *s), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_slow_header_connections_are_closed_busy_ones_kept() {
        let limits = Limits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            max_connections: 8,
        };
        let t0 = Instant::now();
        let s = |in_flight, head: Option<u64>| ConnState {
            in_flight,
            idle_since: t0,
            head_started: head.map(|h| t0 + Duration::from_secs(h)),
        };
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(verdict(&s(0, None), at(59), &limits), Verdict::Keep);
        assert_eq!(verdict(&s(0, None), at(60), &limits), Verdict::CloseIdle);
        // A request's first byte starts the header clock (the idle clock no longer applies).
        assert_eq!(verdict(&s(0, Some(55)), at(64), &limits), Verdict::Keep);
        assert_eq!(
            verdict(&s(0, Some(55)), at(65), &limits),
            Verdict::CloseSlowHeaders
        );
        // A request in flight (a long generation, a stream) is never cut by these clocks.
        assert_eq!(verdict(&s(1, None), at(1000), &limits), Verdict::Keep);
        assert_eq!(verdict(&s(2, Some(0)), at(1000), &limits), Verdict::Keep);
    }

    #[test]
    fn the_watchdog_looks_often_enough() {
        let l = |h, i| Limits {
            header_read: Duration::from_millis(h),
            idle: Duration::from_millis(i),
            max_connections: 1,
        };
        assert_eq!(check_interval(&l(10_000, 60_000)), Duration::from_secs(1));
        assert_eq!(check_interval(&l(400, 60_000)), Duration::from_millis(100));
        assert_eq!(check_interval(&l(10, 10)), Duration::from_millis(20));
    }
}
