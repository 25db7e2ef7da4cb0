//! A small TCP forwarder for fault injection: `127.0.0.1:<port>` → an upstream address (the test
//! PostgreSQL), with an "outage" switch. [`TcpProxy::down`] closes every proxied connection and
//! stops listening, so new connections are refused as by a stopped server;
//! [`TcpProxy::up`] listens on the same port again. This is how the tests "restart PostgreSQL"
//! for one process without touching the machine's shared server. Plain threads, no runtime.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Inner {
    /// accepting (true) or refusing (false) connections
    up: AtomicBool,
    /// the proxy is being dropped
    stop: AtomicBool,
    /// both ends of every open proxied connection
    conns: Mutex<Vec<TcpStream>>,
}

/// A running proxy; stops (and closes its connections) on drop.
pub struct TcpProxy {
    pub port: u16,
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// Forward a free port of 127.0.0.1 to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let i2 = inner.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, port, upstream, &i2));
        TcpProxy {
            port,
            inner,
            thread: Some(thread),
        }
    }

    /// The outage: close every proxied connection, refuse new ones until [`TcpProxy::up`].
    pub fn down(&self) {
        self.inner.up.store(false, Ordering::SeqCst);
        // the accept loop drops its listener within a few ms; connections go now
        for s in self.inner.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Accept connections again (on the same port). Returns once the port listens.
    pub fn up(&self) {
        self.inner.up.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy port {} not listening again",
                self.port
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.down();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(first: TcpListener, port: u16, upstream: SocketAddr, inner: &Arc<Inner>) {
    let mut listener = Some(first);
    while !inner.stop.load(Ordering::SeqCst) {
        if !inner.up.load(Ordering::SeqCst) {
            // closed socket: connections are refused, as by a stopped server
            listener = None;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let l = listener.as_ref().expect("bound above");
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut conns = inner.conns.lock().unwrap();
                if !inner.up.load(Ordering::SeqCst) {
                    continue;
                }
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copy `from` → `to` until either side closes, then close both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
