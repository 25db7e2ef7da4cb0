//! `duffy serve`'s connection limits against misbehaving clients (issue 12 item 2): a slowloris
//! header, idle keep-alives, a trickled body, thousands of idle connections against the
//! connection cap, and graceful shutdown on SIGTERM with a request in flight. Real server
//! processes and raw TCP clients; the timeouts are configured short, every wait is a generous
//! liveness bound, nothing is a performance assertion.
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Short limits for the tests (the defaults are 30 s, 15 s, 60 s, 10 s).
fn limits_yaml(header: u32, idle: u32, body: u32, extra: &str) -> String {
    format!(
        "app:\n  header-read-timeout: {header}s\n  idle-timeout: {idle}s\n  body-read-timeout: {body}s\n{extra}"
    )
}

/// The config of the legacy listener on `port` (no tenants mapped).
fn legacy_listener(port: u16) -> String {
    format!("metaclient:\n  port: {port}\n  usermap: {{}}\n")
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Read until the server closes `s` (EOF or reset); what it sent, and after how long. `None`
/// when it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some((start.elapsed(), String::from_utf8_lossy(&got).into())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some((start.elapsed(), String::from_utf8_lossy(&got).into())),
        }
    }
    None
}

/// Write `bytes` one per second from a thread (stops at the first failed write).
fn trickle(s: &TcpStream, bytes: &'static [u8]) -> std::thread::JoinHandle<usize> {
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        for (i, b) in bytes.iter().enumerate() {
            if w.write_all(&[*b]).is_err() {
                return i;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        bytes.len()
    })
}

/// Read one response (head and `Content-Length` body) from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return (text[9..12].parse().unwrap(), head.to_string());
            }
        }
        let n = s.read(&mut buf).expect("read a response");
        assert!(n > 0, "connection closed before a full response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn get(port: u16, path: &str) -> u16 {
    let mut s = connect(port);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s).0
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

const SLOW_HEADER: &[u8] = b"GET /api/v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn slowloris_header_is_cut_off_after_the_header_read_timeout() {
    let db = TestDb::migrated();
    let lp = free_port();
    let cfg = TestConfig::new(&db.url, &limits_yaml(2, 30, 30, &legacy_listener(lp)));
    let server = Server::start(&cfg.path);
    // both listeners: the v1 API and the legacy cico API
    for port in [server.port, lp] {
        let mut s = connect(port);
        let writer = trickle(&s, SLOW_HEADER);
        let (after, _) = closed_within(&mut s, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!("port {port}: a header sent at 1 byte/s was still being read after 20 s")
        });
        drop(s);
        let sent = writer.join().unwrap();
        assert!(
            sent < SLOW_HEADER.len(),
            "port {port}: the whole slow header went through"
        );
        eprintln!("port {port}: slowloris closed after {after:?}, {sent} bytes sent");
    }
    // the server still answers
    assert_eq!(get(server.port, "/api/v1/pools"), 200);
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let db = TestDb::migrated();
    let lp = free_port();
    let cfg = TestConfig::new(&db.url, &limits_yaml(60, 2, 30, &legacy_listener(lp)));
    let server = Server::start(&cfg.path);
    for (port, path) in [(server.port, "/api/v1/pools"), (lp, "/Inventory")] {
        // a keep-alive connection after one request
        let mut s = connect(port);
        write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let (status, head) = read_response(&mut s);
        assert_eq!(status, 200, "{head}");
        assert!(
            closed_within(&mut s, Duration::from_secs(20)).is_some(),
            "port {port}: an idle keep-alive connection was still open after 20 s"
        );
        // a connection that never sends anything
        let mut silent = connect(port);
        assert!(
            closed_within(&mut silent, Duration::from_secs(20)).is_some(),
            "port {port}: a silent connection was still open after 20 s"
        );
    }
}

#[test]
fn trickled_or_oversized_body_is_cut_off() {
    let db = TestDb::migrated();
    let cfg = TestConfig::new(&db.url, &limits_yaml(30, 30, 2, ""));
    let key = create_tenant(&cfg.path, "t1", &[]);
    let auth = basic_credentials("t1", &key);
    let server = Server::start(&cfg.path);

    // announced 1000 bytes, sent at 1 byte/s: 408 and the connection closes
    let mut s = connect(server.port);
    write!(
        s,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    let writer = trickle(&s, &[b' '; 40]);
    let (after, got) = closed_within(&mut s, Duration::from_secs(20))
        .expect("a body trickled at 1 byte/s was still being read after 20 s");
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got:?}"
    );
    drop(s);
    assert!(writer.join().unwrap() < 40);
    eprintln!("trickled body: 408 and closed after {after:?}");

    // announced 50 MB, 1 byte sent: 413 at once, the connection closes
    let mut s = connect(server.port);
    write!(
        s,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{{"
    )
    .unwrap();
    let (_, got) = closed_within(&mut s, Duration::from_secs(20))
        .expect("a 50 MB body announcement was still being read after 20 s");
    assert!(got.starts_with("HTTP/1.1 413 "), "{got:?}");

    // the server still answers
    assert_eq!(get(server.port, "/api/v1/pools"), 200);
}

/// Raise this process's open-file limit (the server inherits it) to hold thousands of sockets.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(want).max(lim.rlim_cur);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= want,
        "open-file hard limit too low for this test: {}",
        lim.rlim_max
    );
}

#[test]
fn thousands_of_idle_connections_neither_exhaust_descriptors_nor_block_requests() {
    const IDLE: usize = 2000;
    const CAP: usize = 400;
    raise_nofile(8192);
    let db = TestDb::migrated();
    let cfg = TestConfig::new(
        &db.url,
        &limits_yaml(30, 2, 30, &format!("  max-connections: {CAP}\n")),
    );
    let server = Server::start(&cfg.path);
    let pid = server.child.id();
    assert_eq!(get(server.port, "/api/v1/pools"), 200);
    std::thread::sleep(Duration::from_millis(300));
    let idle_fds = fd_count(pid);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let port = server.port;
    let held = rt.block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..IDLE {
            set.spawn(tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            ));
        }
        let mut held = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(s)) = r.unwrap() {
                held.push(s);
            }
        }
        held
    });
    let opened = held.len();
    assert!(opened > CAP, "only {opened} connections opened");
    let peak_fds = fd_count(pid);
    // a normal request is answered while the idle connections are held
    let status = std::thread::spawn(move || get(port, "/api/v1/pools"))
        .join()
        .unwrap();
    assert_eq!(status, 200);
    let during_fds = fd_count(pid);
    assert!(
        peak_fds.max(during_fds) <= idle_fds + CAP + 40,
        "the server held {} descriptors (idle {idle_fds}, cap {CAP})",
        peak_fds.max(during_fds)
    );
    drop(held);
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fd_count(pid) > idle_fds + 4 {
        assert!(
            Instant::now() < deadline,
            "descriptors did not return to the idle count: {} (idle {idle_fds})",
            fd_count(pid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(server.port, "/api/v1/pools"), 200);
    let log = server.log();
    assert!(
        log.matches("accept failed").count() <= 2,
        "accept failures logged per error:\n{}",
        &log[..log.len().min(4000)]
    );
    eprintln!(
        "{IDLE} idle connections ({opened} opened): fds idle {idle_fds}, peak {peak_fds}, during request {during_fds}"
    );
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let db = TestDb::migrated();
    let lp = free_port();
    // idle keep-alives outlive neither the shutdown nor its (long) bound
    let cfg = TestConfig::new(
        &db.url,
        &limits_yaml(
            60,
            60,
            30,
            &format!("  shutdown-timeout: 60s\n{}", legacy_listener(lp)),
        ),
    );
    let key = create_tenant(&cfg.path, "t1", &[]);
    let auth = basic_credentials("t1", &key);
    let mut server = Server::start(&cfg.path);
    let port = server.port;

    // idle keep-alive connections on both listeners: closed by the shutdown, not waited for
    let mut idle = connect(port);
    write!(
        idle,
        "GET /api/v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let mut idle_legacy = connect(lp);
    write!(
        idle_legacy,
        "GET /Inventory HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    assert_eq!(read_response(&mut idle_legacy).0, 200);

    // a request whose body is still arriving when SIGTERM comes
    let body = br#"{"nodes_specs": [{"pool": "nope", "quantity": 1}]}"#;
    let mut s = connect(port);
    write!(
        s,
        "POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child
    assert_eq!(
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
        0
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited with a request in flight"
    );
    // no new connections
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server still accepts connections after SIGTERM"
    );
    s.write_all(&body[10..]).unwrap();
    let (status, head) = read_response(&mut s);
    assert!(
        (400..500).contains(&status),
        "the in-flight request got {status}\n{head}"
    );
    let status = exit_within(&mut server.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    for s in [&mut idle, &mut idle_legacy] {
        assert!(
            closed_within(s, Duration::from_secs(5)).is_some(),
            "an idle keep-alive connection was left open"
        );
    }
}

/// Wait for `child` to exit (well before a 60 s shutdown-timeout would let it).
fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_legacy_shuts_down_on_sigterm_with_an_idle_keep_alive() {
    let db = TestDb::migrated();
    let cfg = TestConfig::new(
        &db.url,
        &limits_yaml(
            60,
            60,
            30,
            "  shutdown-timeout: 60s\nmetaclient:\n  usermap: {}\n",
        ),
    );
    let port = free_port();
    let mut child = duffy_cmd(Some(&cfg.path), &["serve-legacy", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut idle = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(child.try_wait().unwrap().is_none(), "serve-legacy exited");
        assert!(Instant::now() < deadline, "serve-legacy did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    write!(idle, "GET /Inventory HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    // SAFETY: signalling our own child
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = exit_within(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    assert!(closed_within(&mut idle, Duration::from_secs(5)).is_some());
}
#[test]
fn out_of_descriptors_accept_backs_off_and_logs_once_per_burst() {
    use std::os::unix::process::CommandExt;
    let db = TestDb::migrated();
    // a cap the open-file limit cannot honour: accept fails with EMFILE
    let cfg = TestConfig::new(
        &db.url,
        &limits_yaml(30, 3, 30, "  max-connections: 1000\n"),
    );
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = duffy_cmd(
        Some(&cfg.path),
        &["serve", "-p", &port.to_string(), "--db-connections", "2"],
    );
    cmd.stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap());
    // SAFETY: only setrlimit between fork and exec
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "duffy serve exited");
        assert!(Instant::now() < deadline, "duffy serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, "/api/v1/pools"), 200);
    let read_log = || std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        read_log().contains("app.max-connections 1000 exceeds"),
        "{}",
        read_log()
    );

    // more connections than descriptors, held for a while
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let failed = read_log().matches("accept failed").count();
    assert_eq!(failed, 1, "accept failures:\n{}", read_log());
    drop(held);

    // the idle ones go, the server answers again and says so once
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_log().contains("accept works again") {
        assert!(Instant::now() < deadline, "{}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(port, "/api/v1/pools"), 200);
    assert!(read_log().matches("accept failed").count() <= 2);
    let _ = child.kill();
    let _ = child.wait();
}
