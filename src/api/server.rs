//! The connection side of both HTTP listeners (v1 and legacy): the accept loop, the cap on
//! open connections, the per-connection timeouts and graceful shutdown.
//!
//! * **Header read**: hyper's header timer (it needs a timer: [`TokioTimer`]) runs from the
//!   moment a connection waits for a request head — right after accept and after each response —
//!   so a slowloris client trickling a header is cut off after `app.header-read-timeout`.
//! * **Idle**: a connection with no request in flight that receives no byte for
//!   `app.idle-timeout` is closed (idle keep-alives, connections that never send anything).
//! * **Body**: each request carries a [`BodyDeadline`] (`app.body-read-timeout` after its head);
//!   `http::read_json` answers 408 and closes the connection when the body is not in by then.
//! * **Cap**: at most [`Limits::max_connections`] connections are open over both listeners; at
//!   the cap the loop stops accepting, so further clients wait in the kernel's backlog instead of
//!   costing a descriptor. A failing `accept` (EMFILE, ENFILE, …) backs off and is never spun
//!   on; a burst of failures (failures with less than [`BURST_QUIET`] between them, successes
//!   in between or not) is logged twice: when it starts and, once it has been quiet that long,
//!   how many failures it had ([`AcceptBurst`]).
//! * **Shutdown**: when [`Shutdown`] turns true the loop stops accepting, every connection is told
//!   to finish its in-flight request and close (idle ones close at once), and [`serve`] returns
//!   when the last one is gone; the caller bounds that wait with `app.shutdown-timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::http::Resp;
use crate::config::AppConfig;

/// Descriptors kept free for the process itself (log files, the listeners, DNS, TLS roots…)
/// on top of the database connections when `app.max-connections` is derived.
const FD_HEADROOM: u64 = 64;

/// Pause after a failed `accept` before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A burst of `accept` failures ends after this long without one.
const BURST_QUIET: Duration = Duration::from_secs(1);

/// The failures of the current burst of `accept` failures, for logging one line when it starts
/// and one when it is over — not one per failure, nor one per recovery between two failures
/// (a server at its descriptor limit alternates: a descriptor frees, accept works once, fails).
#[derive(Debug, Default)]
struct AcceptBurst {
    failures: u64,
    last: Option<Instant>,
}

impl AcceptBurst {
    /// Count a failure at `now`; true when it starts a burst (log it).
    fn failed(&mut self, now: Instant) -> bool {
        let starts = self.failures == 0;
        self.failures += 1;
        self.last = Some(now);
        starts
    }

    /// When the current burst is over, if there is one.
    fn quiet_at(&self) -> Option<Instant> {
        self.last.map(|t| t + BURST_QUIET)
    }

    /// End the burst at `now` if it has been quiet long enough: its failure count.
    fn end(&mut self, now: Instant) -> Option<u64> {
        match self.quiet_at() {
            Some(t) if now >= t => {
                let n = self.failures;
                *self = Self::default();
                Some(n)
            }
            _ => None,
        }
    }
}

/// Turns true when the server should stop (SIGTERM/SIGINT). Dropping the sender stops nothing.
pub type Shutdown = watch::Receiver<bool>;

/// When a request's body must have arrived by (a request extension set per request).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Instant);

/// The limits both listeners share (one connection cap for the whole process).
#[derive(Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_connections: usize,
    conns: Arc<Semaphore>,
    open: AtomicUsize,
}

impl Limits {
    /// From `app.*`; without `app.max-connections` the cap is the open-file limit (raised to its
    /// hard limit first) minus the database connections and [`FD_HEADROOM`].
    pub fn from_config(app: &AppConfig, db_connections: usize) -> Limits {
        let nofile = raise_nofile_limit();
        let reserved = db_connections as u64 + FD_HEADROOM;
        let derived = nofile.map(|n| n.saturating_sub(reserved).max(1));
        let max_connections = match (app.max_connections, derived) {
            (Some(m), Some(d)) if u64::from(m) > d => {
                tracing::warn!(
                    "app.max-connections {m} exceeds what the open-file limit ({}) leaves after {reserved} reserved descriptors ({d}): accept may fail with EMFILE under load",
                    nofile.unwrap_or(0)
                );
                m as usize
            }
            (Some(m), _) => m as usize,
            (None, Some(d)) => usize::try_from(d).unwrap_or(usize::MAX).min(1 << 20),
            (None, None) => 1024,
        };
        Limits::new(app, max_connections)
    }

    /// `app.*` with an explicit cap.
    pub fn new(app: &AppConfig, max_connections: usize) -> Limits {
        Limits {
            header_read_timeout: app.header_read_timeout.0,
            idle_timeout: app.idle_timeout.0,
            body_read_timeout: app.body_read_timeout.0,
            shutdown_timeout: app.shutdown_timeout.0,
            max_connections,
            conns: Arc::new(Semaphore::new(max_connections)),
            open: AtomicUsize::new(0),
        }
    }

    /// Connections open right now (both listeners).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the resulting soft limit (None when it
/// cannot be read or is unlimited).
fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Resolve when `shutdown` is (or turns) true; never when its sender is gone while false.
async fn stopped(shutdown: &mut Shutdown) {
    if shutdown.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await
    }
}

/// The accept loop of one listener (see the module documentation).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Arc<Limits>,
    mut shutdown: Shutdown,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    // every connection task holds a clone; recv() yields None once all are gone
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut burst = AcceptBurst::default();
    loop {
        let permit = tokio::select! {
            p = limits.conns.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let quiet_at = burst.quiet_at();
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::time::sleep_until(quiet_at.unwrap_or_else(Instant::now)), if quiet_at.is_some() => {
                if let Some(n) = burst.end(Instant::now()) {
                    tracing::warn!("accept works again after {n} failures");
                }
                continue;
            }
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS…: back off; one line per burst
                if burst.failed(Instant::now()) {
                    tracing::warn!(
                        "accept failed: {e} ({} connections open); retrying every {ACCEPT_BACKOFF:?}",
                        limits.open_connections()
                    );
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = stopped(&mut shutdown) => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (h, limits, shutdown, alive) = (
            handler.clone(),
            limits.clone(),
            shutdown.clone(),
            alive.clone(),
        );
        tokio::spawn(async move {
            limits.open.fetch_add(1, Ordering::Relaxed);
            // the client address, for authentication's back-off (`auth::PEER`)
            super::auth::PEER
                .scope(peer.ip(), connection(stream, &limits, shutdown, h))
                .await;
            limits.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(alive);
        });
    }
    drop(listener);
    drop(alive);
    let _ = all_closed.recv().await;
}

/// Serve one connection until it closes: hyper with its header timer, the idle watchdog and
/// graceful shutdown.
async fn connection<F, Fut>(stream: TcpStream, limits: &Limits, mut shutdown: Shutdown, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let epoch = Instant::now();
    let activity = Arc::new(Activity {
        epoch,
        last_active_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let body_timeout = limits.body_read_timeout;
    let act = activity.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let h = handler.clone();
        let guard = InFlight::enter(act.clone());
        req.extensions_mut()
            .insert(BodyDeadline(Instant::now() + body_timeout));
        async move {
            let resp = h(req).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut closing = false;
    loop {
        let last = activity.last_active();
        let now = Instant::now();
        let check_at = if last + idle > now {
            last + idle
        } else {
            now + idle
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopped(&mut shutdown), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(check_at), if !closing => {
                let last = activity.last_active();
                if activity.in_flight.load(Ordering::Relaxed) == 0 && last + idle <= Instant::now() {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What the idle watchdog looks at.
struct Activity {
    /// when the connection was accepted
    epoch: Instant,
    /// milliseconds after `epoch` of the last read that returned bytes or the last response
    last_active_ms: AtomicU64,
    /// requests whose handler has not returned yet
    in_flight: AtomicUsize,
}

/// Counts a request in flight until dropped (also when hyper drops the handler's future).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // the idle time of a keep-alive starts with its response, not with its request's bytes
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn last_active(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }
}

/// A TCP stream that records when it last received bytes (in its [`Activity`]).
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_once_however_often_accept_recovers_within_it() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = AcceptBurst::default();
        assert_eq!(b.quiet_at(), None);
        assert!(b.failed(ms(0)), "the first failure starts a burst");
        // accept works once between failures: the burst is not over
        assert_eq!(b.end(ms(100)), None);
        assert!(!b.failed(ms(200)));
        assert!(!b.failed(ms(900)));
        assert_eq!(b.quiet_at(), Some(ms(900) + BURST_QUIET));
        assert_eq!(b.end(ms(1800)), None);
        assert_eq!(b.end(ms(1900)), Some(3));
        assert_eq!(b.quiet_at(), None);
        assert!(
            b.failed(ms(5000)),
            "a failure after a quiet second starts a new burst"
        );
    }
}
