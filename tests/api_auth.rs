//! What wrong API keys may cost `duffy serve` (issue 12 item 3; rule in `src/api/auth.rs`):
//! back-off with 429 `Retry-After` per client address and (address, tenant name), never per
//! tenant alone; a failed key answered again from memory; unknown names checked against a dummy
//! hash so that they cost what a known name costs.
//!
//! Work is measured by counting, not timing: the server's CPU time (`/proc/PID/stat`, utime +
//! stime of all its threads) against the CPU one bcrypt check took in the same test. Clients
//! connect from 127.0.0.1 and 127.0.0.2 (both loopback on Linux) to be two addresses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// `GET path` with Basic `user:key`, connecting from `from` (a loopback address).
fn get(port: u16, from: &str, path: &str, user: &str, key: &str) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
            .unwrap();
        let mut s = sock
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap();
        let auth = basic_credentials(user, key);
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out))
            .await
            .expect("reply within 60 s")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    let (head, body) = raw.split_once("\r\n\r\n").expect("a full reply");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_string));
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Reply {
        status,
        retry_after,
        body,
    }
}

/// CPU seconds the process has used (all threads, user + system).
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // after the `(comm)` field: state is field 3, utime 14, stime 15
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Setup {
    _db: TestDb,
    _cfg: TestConfig,
    server: Server,
    alice: String,
    bob: String,
}

fn setup(extra: &str) -> Setup {
    let db = TestDb::migrated();
    let cfg = TestConfig::new(&db.url, extra);
    let alice = create_tenant(&cfg.path, "alice", &[]);
    let bob = create_tenant(&cfg.path, "bob", &[]);
    let server = Server::start(&cfg.path);
    Setup {
        _db: db,
        _cfg: cfg,
        server,
        alice,
        bob,
    }
}

impl Setup {
    fn get(&self, from: &str, user: &str, key: &str) -> Reply {
        get(self.server.port, from, "/api/v1/tenants", user, key)
    }
    fn cpu(&self) -> f64 {
        cpu(self.server.child.id())
    }
}

fn wrong_key(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

fn assert_unauthorized(r: &Reply, what: &str) {
    assert_eq!(
        (r.status, r.body.clone()),
        (401, serde_json::json!({"detail": "Unauthorized"})),
        "{what}"
    );
}

fn assert_backed_off(r: &Reply, what: &str) {
    assert_eq!(r.status, 429, "{what}: {}", r.body);
    assert_eq!(
        r.body,
        serde_json::json!({"detail": "Too many failed authentication attempts"}),
        "{what}"
    );
    let secs: u64 = r
        .retry_after
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap();
    assert!((1..=300).contains(&secs), "{what}: Retry-After {secs}");
}

/// Five wrong keys for alice from 127.0.0.1 (the default `failures-per-tenant`); returns the
/// CPU seconds one bcrypt check took.
fn five_wrong_keys(s: &Setup) -> f64 {
    let before = s.cpu();
    for i in 0..5 {
        assert_unauthorized(&s.get("127.0.0.1", "alice", &wrong_key(i)), "wrong key {i}");
    }
    (s.cpu() - before) / 5.0
}

#[test]
fn wrong_keys_past_the_threshold_get_429_without_bcrypt() {
    let s = setup("");
    let per_check = five_wrong_keys(&s);
    assert!(per_check > 0.05, "a bcrypt check took {per_check} s of CPU");
    let before = s.cpu();
    for i in 5..25 {
        assert_backed_off(&s.get("127.0.0.1", "alice", &wrong_key(i)), "after 5");
    }
    let spent = s.cpu() - before;
    assert!(
        spent < 2.0 * per_check,
        "20 backed-off requests cost {spent} s of CPU, one bcrypt check {per_check} s"
    );
}

#[test]
fn a_right_key_from_another_address_works_during_back_off() {
    let s = setup("");
    five_wrong_keys(&s);
    assert_backed_off(&s.get("127.0.0.1", "alice", &wrong_key(9)), "attacker");
    // the attacker's address is backed off even with the right key (documented)...
    assert_backed_off(
        &s.get("127.0.0.1", "alice", &s.alice),
        "right key, attacker's address",
    );
    // ...but alice from elsewhere is not, nor bob from the attacker's address
    let r = s.get("127.0.0.2", "alice", &s.alice);
    assert_eq!(r.status, 200, "alice from 127.0.0.2: {}", r.body);
    let r = s.get("127.0.0.1", "bob", &s.bob);
    assert_eq!(r.status, 200, "bob from 127.0.0.1: {}", r.body);
    // and the attacker is still backed off: the 2 s window may have run out on a loaded
    // machine (two bcrypt checks ran meanwhile), then one more wrong key starts a longer one
    let mut r = s.get("127.0.0.1", "alice", &wrong_key(10));
    if r.status == 401 {
        r = s.get("127.0.0.1", "alice", &wrong_key(11));
    }
    assert_backed_off(&r, "attacker again");
}

#[test]
fn an_address_trying_many_names_is_backed_off() {
    let s = setup("app:\n  auth:\n    failures-per-address: 3\n");
    for (i, name) in ["nobody", "alice", "bob"].iter().enumerate() {
        assert_unauthorized(&s.get("127.0.0.1", name, &wrong_key(i)), name);
    }
    assert_backed_off(&s.get("127.0.0.1", "carol", &wrong_key(7)), "fourth name");
    let r = s.get("127.0.0.2", "bob", &s.bob);
    assert_eq!(r.status, 200, "bob from 127.0.0.2: {}", r.body);
}

#[test]
fn unknown_and_known_names_cost_the_same() {
    let s = setup("");
    let before = s.cpu();
    for (i, name) in ["mallory", "Alice", "trudy"].iter().enumerate() {
        let r = s.get("127.0.0.1", name, &wrong_key(i));
        assert_unauthorized(&r, name);
    }
    let unknown = s.cpu() - before;
    let before = s.cpu();
    for i in 0..3 {
        assert_unauthorized(&s.get("127.0.0.1", "bob", &wrong_key(i)), "bob");
    }
    let known = s.cpu() - before;
    assert!(
        unknown > known / 2.0 && known > 0.1,
        "3 unknown names cost {unknown} s of CPU, 3 wrong keys of a known name {known} s"
    );
}

#[test]
fn the_same_wrong_key_again_costs_no_bcrypt() {
    let s = setup("");
    let before = s.cpu();
    assert_unauthorized(&s.get("127.0.0.1", "alice", &wrong_key(1)), "first");
    assert_unauthorized(
        &s.get("127.0.0.1", "nobody", &wrong_key(1)),
        "first, unknown",
    );
    let per_check = (s.cpu() - before) / 2.0;
    let before = s.cpu();
    // not counted as new failures either: 10 repeats stay 401, not 429
    for i in 0..5 {
        assert_unauthorized(&s.get("127.0.0.1", "alice", &wrong_key(1)), "repeat");
        assert_unauthorized(
            &s.get("127.0.0.1", "nobody", &wrong_key(1)),
            "repeat, unknown",
        );
        let _ = i;
    }
    let spent = s.cpu() - before;
    assert!(
        spent < per_check,
        "10 repeated wrong keys cost {spent} s of CPU, one bcrypt check {per_check} s"
    );
    // the right key still works
    let r = s.get("127.0.0.1", "alice", &s.alice);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn bad_auth_limits_name_the_key() {
    let db = TestDb::migrated();
    for (extra, key) in [
        (
            "app:\n  auth:\n    bcrypt-workers: 0\n",
            "app.auth.bcrypt-workers",
        ),
        (
            "app:\n  auth:\n    max-backoff: 0\n",
            "app.auth.max-backoff",
        ),
        (
            "app:\n  auth:\n    failures-per-tenant: 0\n",
            "app.auth.failures-per-tenant",
        ),
    ] {
        let cfg = TestConfig::new(&db.url, extra);
        let o = duffy(Some(&cfg.path), &["config", "check"]);
        assert!(!o.status.success(), "{extra}");
        let err = stderr(&o);
        assert!(err.contains(key), "{extra}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // good values are taken and stated
    let cfg = TestConfig::new(&db.url, "app:\n  auth:\n    bcrypt-workers: 2\n");
    let out = ok(&duffy(Some(&cfg.path), &["config", "check"]));
    assert!(
        out.contains("Authentication: 2 bcrypt worker(s); 429 after 5 wrong keys"),
        "{out}"
    );
}
