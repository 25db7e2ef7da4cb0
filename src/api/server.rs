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
//!   costing a descriptor. A failing `accept` (EMFILE, ENFILE, …) backs off and is logged once per
//!   burst, never spun on.
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
    let mut failures = 0u64;
    loop {
        let permit = tokio::select! {
            p = limits.conns.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS…: back off; one line per burst
                if failures == 0 {
                    tracing::warn!(
                        "accept failed: {e} ({} connections open); retrying every {ACCEPT_BACKOFF:?}",
                        limits.open_connections()
                    );
                }
                failures += 1;
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    _ = stopped(&mut shutdown) => break,
                }
            }
        };
        if failures > 0 {
            tracing::warn!("accept works again after {failures} failures");
            failures = 0;
        }
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
