//! Prometheus metrics: `GET /metrics` of a real `duffy serve` and of a real `duffy scheduler`
//! daemon (`scheduler.metrics-listen`, a real ansible-core running throw-away playbooks),
//! parsed by Prometheus' own checker (`promtool check metrics`, from `.ci/promtool.sh`) and
//! compared with the database after known requests and jobs; `app.metrics` access modes; the
//! shipped alert rules (`promtool check rules`, and `promtool test rules` proving that each alert
//! fires) and the Grafana dashboard, whose every metric name must be one that duffy exposes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A raw HTTP/1.1 request (`Connection: close`): (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// `GET /metrics`: the text (a 200 with the exposition content type).
fn scrape(port: u16, headers: &[(&str, &str)]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".to_string();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).expect("UTF-8 exposition");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    body.to_string()
}

/// `promtool check metrics` (Prometheus' parser and linter of the text format) accepts `text`
/// without a single complaint.
fn promtool_accepts(text: &str) {
    let mut c = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        stdout(&o),
        stderr(&o)
    );
}

/// Samples of an exposition: `name{k="v",…}` (labels as written) → value. Also checks the
/// structure the parser above does not (every sample's family declared once, before it).
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut typed = BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(typed.insert(name.clone()), "family {name} declared twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "{name} before its # TYPE");
        let v = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "{series} twice"
        );
    }
    out
}

/// The value of `series` (0 when absent, so that "no such series" and 0 compare alike only
/// where the caller says so).
fn get(m: &BTreeMap<String, f64>, series: &str) -> Option<f64> {
    m.get(series).copied()
}

fn must(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    get(m, series).unwrap_or_else(|| {
        panic!(
            "{series} missing; have:\n{}",
            m.keys().cloned().collect::<Vec<_>>().join("\n")
        )
    })
}

/// Metric family names of an exposition (histogram suffixes removed).
fn family_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// `(pool, state) → count` of the nodes not retired, from the database itself.
fn db_nodes(db: &TestDb) -> BTreeMap<(String, String), f64> {
    db.rows(
        "SELECT COALESCE(pool, '') || '|' || state::text || '|' || count(*) FROM nodes
         WHERE retired_at IS NULL GROUP BY pool, state",
    )
    .iter()
    .map(|r| {
        let p: Vec<&str> = r.split('|').collect();
        ((p[0].to_string(), p[1].to_string()), p[2].parse().unwrap())
    })
    .collect()
}

/// Every `duffy_nodes` series equals the database's count (0 where it has none), and every
/// node the database has is in a series.
fn assert_nodes_match(m: &BTreeMap<String, f64>, db: &TestDb, pools: &[&str]) {
    let want = db_nodes(db);
    const STATES: [&str; 8] = [
        "unused",
        "provisioning",
        "ready",
        "contextualizing",
        "deployed",
        "deprovisioning",
        "done",
        "failed",
    ];
    for pool in pools {
        for st in STATES {
            let n = want
                .get(&(pool.to_string(), st.to_string()))
                .copied()
                .unwrap_or(0.0);
            assert_eq!(
                must(m, &format!("duffy_nodes{{pool=\"{pool}\",state=\"{st}\"}}")),
                n,
                "{pool} {st}"
            );
        }
    }
    for ((pool, st), n) in &want {
        assert_eq!(
            must(m, &format!("duffy_nodes{{pool=\"{pool}\",state=\"{st}\"}}")),
            *n
        );
    }
}

/// The fill count of `pool` by the scheduler's own query.
fn db_filled(db: &TestDb, pool: &str) -> f64 {
    db.one(&duffy::db::jobs::FILL_COUNT.replace("$1", &format!("'{pool}'")))
        .parse()
        .unwrap()
}

fn req_series(route: &str, method: &str, status: u16) -> String {
    format!("duffy_http_requests_total{{api=\"v1\",route=\"{route}\",method=\"{method}\",status=\"{status}\"}}")
}

#[test]
fn serve_metrics_parse_and_match_the_database() {
    let db = TestDb::migrated();
    let cfg = TestConfig::new(&db.url, &pools_yaml(&[("pa", 3), ("pb", 2), ("pc", 1)]));
    let alice = create_tenant(&cfg.path, "alice", &[]);
    let bob = create_tenant(&cfg.path, "bob", &["--node-quota", "1"]);
    create_tenant(&cfg.path, "carol", &[]);
    add_ready_nodes(&db, "pa", 4, 10);
    add_ready_nodes(&db, "pb", 1, 11);
    db.exec(
        "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data)
         VALUES ('f1', '127.12.0.1', 'failed', 'pb', false, '{}'),
                ('u1', '127.12.0.2', 'unused', NULL, true, '{}')",
    );
    // an active session of bob's that expired ten minutes ago (the scheduler is not running)
    db.exec(
        "INSERT INTO sessions (tenant_id, expires_at)
         SELECT id, (now() AT TIME ZONE 'utc') - interval '10 minutes' FROM tenants WHERE name = 'bob'",
    );
    let srv = Server::start(&cfg.path);
    let port = srv.port;
    let json = ("Content-Type", "application/json");
    for _ in 0..3 {
        assert_eq!(http(port, "GET", "/api/v1/pools", &[], "").0, 200);
    }
    for _ in 0..2 {
        assert_eq!(http(port, "GET", "/api/v1/pools/pa", &[], "").0, 200);
    }
    assert_eq!(http(port, "GET", "/api/v1/pools/nope", &[], "").0, 404);
    assert_eq!(http(port, "DELETE", "/api/v1/pools/pa", &[], "").0, 405);
    assert_eq!(http(port, "GET", "/no/such/path", &[], "").0, 404);
    let a = format!("Basic {}", basic_credentials("alice", &alice));
    let b = format!("Basic {}", basic_credentials("bob", &bob));
    let specs = |pool: &str, n: u32| {
        format!(r#"{{"nodes_specs": [{{"pool": "{pool}", "quantity": {n}}}]}}"#)
    };
    let (st, body) = http(
        port,
        "POST",
        "/api/v1/sessions",
        &[("Authorization", &a), json],
        &specs("pa", 2),
    );
    assert_eq!(st, 201, "{body}");
    // more than bob's quota: refused
    let (refused, body) = http(
        port,
        "POST",
        "/api/v1/sessions",
        &[("Authorization", &b), json],
        &specs("pb", 2),
    );
    assert!((400..500).contains(&refused), "{body}");
    let wrong = format!("Basic {}", basic_credentials("alice", "not-the-key"));
    for _ in 0..2 {
        assert_eq!(
            http(
                port,
                "GET",
                "/api/v1/sessions",
                &[("Authorization", &wrong)],
                ""
            )
            .0,
            401
        );
    }
    assert_eq!(
        http(
            port,
            "GET",
            "/api/v1/sessions",
            &[("Authorization", "Basic %%%")],
            ""
        )
        .0,
        401
    );

    let text = scrape(port, &[]);
    promtool_accepts(&text);
    let m = samples(&text);
    // requests, by route template (never the raw path), method and status
    assert_eq!(must(&m, &req_series("/api/v1/pools", "GET", 200)), 3.0);
    assert_eq!(
        must(&m, &req_series("/api/v1/pools/{name}", "GET", 200)),
        2.0
    );
    assert_eq!(
        must(&m, &req_series("/api/v1/pools/{name}", "GET", 404)),
        1.0
    );
    assert_eq!(
        must(&m, &req_series("/api/v1/pools/{name}", "DELETE", 405)),
        1.0
    );
    assert_eq!(must(&m, &req_series("(unmatched)", "GET", 404)), 1.0);
    assert_eq!(must(&m, &req_series("/api/v1/sessions", "POST", 201)), 1.0);
    assert_eq!(
        must(&m, &req_series("/api/v1/sessions", "POST", refused)),
        1.0
    );
    assert_eq!(must(&m, &req_series("/api/v1/sessions", "GET", 401)), 3.0);
    assert!(
        !text.contains("/no/such/path") && !text.contains("pools/pa\""),
        "raw paths in labels"
    );
    let h = "duffy_http_request_duration_seconds";
    let l = r#"{api="v1",route="/api/v1/pools",method="GET",status="200"}"#;
    assert_eq!(must(&m, &format!("{h}_count{l}")), 3.0);
    let inf = r#"{api="v1",route="/api/v1/pools",method="GET",status="200",le="+Inf"}"#;
    assert_eq!(must(&m, &format!("{h}_bucket{inf}")), 3.0);
    assert!(must(&m, &format!("{h}_sum{l}")) > 0.0);
    // allocations: one created, one refused
    let alloc = "duffy_session_allocation_duration_seconds_count";
    assert_eq!(
        must(&m, &format!("{alloc}{{api=\"v1\",outcome=\"created\"}}")),
        1.0
    );
    assert_eq!(
        must(&m, &format!("{alloc}{{api=\"v1\",outcome=\"refused\"}}")),
        1.0
    );
    assert_eq!(
        must(&m, &format!("{alloc}{{api=\"v1\",outcome=\"failed\"}}")),
        0.0
    );
    // authentication failures
    assert_eq!(
        must(&m, "duffy_auth_failures_total{reason=\"wrong_key\"}"),
        2.0
    );
    assert_eq!(
        must(&m, "duffy_auth_failures_total{reason=\"malformed\"}"),
        1.0
    );
    assert_eq!(
        must(&m, "duffy_auth_failures_total{reason=\"backed_off\"}"),
        0.0
    );
    // the database's view, after the requests
    assert_eq!(must(&m, "duffy_metrics_database_up"), 1.0);
    assert_nodes_match(&m, &db, &["pa", "pb", "pc"]);
    assert_eq!(must(&m, "duffy_nodes{pool=\"pa\",state=\"deployed\"}"), 2.0);
    assert_eq!(must(&m, "duffy_nodes{pool=\"\",state=\"unused\"}"), 1.0);
    for (pool, level) in [("pa", 3.0), ("pb", 2.0), ("pc", 1.0)] {
        let filled = db_filled(&db, pool);
        assert_eq!(
            must(&m, &format!("duffy_pool_fill_level{{pool=\"{pool}\"}}")),
            level
        );
        assert_eq!(
            must(&m, &format!("duffy_pool_filled_nodes{{pool=\"{pool}\"}}")),
            filled
        );
        assert_eq!(
            must(&m, &format!("duffy_pool_deficit_nodes{{pool=\"{pool}\"}}")),
            (level - filled).max(0.0)
        );
    }
    assert_eq!(must(&m, "duffy_pool_deficit_nodes{pool=\"pa\"}"), 1.0);
    for t in ["alice", "bob", "carol"] {
        let n: f64 = db
            .one(&format!(
                "SELECT count(*) FROM sessions s JOIN tenants t ON t.id = s.tenant_id
                 WHERE t.name = '{t}' AND s.retired_at IS NULL"
            ))
            .parse()
            .unwrap();
        assert_eq!(
            must(&m, &format!("duffy_sessions_active{{tenant=\"{t}\"}}")),
            n,
            "{t}"
        );
    }
    assert_eq!(must(&m, "duffy_sessions_active{tenant=\"alice\"}"), 1.0);
    assert_eq!(must(&m, "duffy_sessions_expired_unretired"), 1.0);
    let age = must(&m, "duffy_sessions_expired_unretired_max_age_seconds");
    assert!((590.0..3600.0).contains(&age), "{age}");
    // connection pool and process
    assert_eq!(must(&m, "duffy_db_pool_max_connections"), 16.0);
    let open = must(&m, "duffy_db_pool_connections{state=\"in_use\"}")
        + must(&m, "duffy_db_pool_connections{state=\"idle\"}");
    assert!((1.0..=16.0).contains(&open), "{open}");
    assert!(must(&m, "process_open_fds") > 3.0);
    assert!(must(&m, "process_resident_memory_bytes") > 1e6);
    assert!(must(&m, "process_max_fds") >= must(&m, "process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = must(&m, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    assert!(must(&m, "process_cpu_seconds_total") > 0.0);

    // the scrape itself is counted with the next one
    let m = samples(&scrape(port, &[]));
    assert_eq!(must(&m, &req_series("/metrics", "GET", 200)), 1.0);
}

#[test]
fn metrics_access_is_configurable() {
    let db = TestDb::migrated();
    let cfg = TestConfig::new(&db.url, "app:\n  metrics: admin\n");
    let admin = create_tenant(&cfg.path, "root", &["--is-admin"]);
    let user = create_tenant(&cfg.path, "user", &[]);
    let srv = Server::start(&cfg.path);
    assert_eq!(http(srv.port, "GET", "/metrics", &[], "").0, 401);
    let u = format!("Basic {}", basic_credentials("user", &user));
    assert_eq!(
        http(srv.port, "GET", "/metrics", &[("Authorization", &u)], "").0,
        403
    );
    let a = format!("Basic {}", basic_credentials("root", &admin));
    promtool_accepts(&scrape(srv.port, &[("Authorization", &a)]));
    assert_eq!(
        http(srv.port, "POST", "/metrics", &[("Authorization", &a)], "").0,
        405
    );
    drop(srv);

    let cfg = TestConfig::new(&db.url, "app:\n  metrics: 'off'\n");
    let srv = Server::start(&cfg.path);
    let (st, body) = http(srv.port, "GET", "/metrics", &[], "");
    assert_eq!(st, 404, "{body}");
    assert_eq!(body, r#"{"detail":"Not Found"}"#);
}

/// Reports one result per node of `duffy_in`.
const OK_PLAYBOOK: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: results
      set_fact:
        acc: "{{ acc | default([]) + [{'ipaddr': '127.13.' ~ (item.id // 256) ~ '.' ~ (item.id % 256), 'hostname': 'm' ~ item.id ~ '.test'}] }}"
      loop: "{{ duffy_in.nodes }}"
    - name: report
      set_fact:
        duffy_out:
          nodes: "{{ acc }}"
"#;

const FAIL_PLAYBOOK: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: break
      fail:
        msg: boom
"#;

/// A `duffy scheduler` daemon, stopped with SIGTERM (then SIGKILL) on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Scrape until `check` passes (the scheduler counts a job just after writing its outcome,
/// and the database gauges are cached for a few seconds), at most `limit`; then the last
/// failure is the test's.
fn eventually(
    port: u16,
    limit: Duration,
    log: &Path,
    check: impl Fn(&str) -> Result<(), String>,
) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(port, &[]);
        match check(&text) {
            Ok(()) => return text,
            Err(e) if start.elapsed() > limit => panic!(
                "{e}\nmetrics:\n{text}\nscheduler log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn scheduler_metrics_count_jobs_and_playbooks_like_the_database() {
    let db = TestDb::migrated();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("ok.yml"), OK_PLAYBOOK).unwrap();
    std::fs::write(top.join("fail.yml"), FAIL_PLAYBOOK).unwrap();
    let mport = free_port();
    let pool = |name: &str, level: u32, playbook: &str, parallel: bool| {
        format!(
            "    {name}:\n      fill-level: {level}\n      run-parallel: {parallel}\n      contextualize: none\n      mechanism:\n        type: ansible\n        ansible:\n          topdir: {}\n          provision: {{playbook: {playbook}}}\n",
            top.display()
        )
    };
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "scheduler:\n  ansible-playbook: {}\n  state-dir: {}\n  metrics-listen: 127.0.0.1:{mport}\n  max-attempts: 2\n  retry-delay: 0.2\n  lease: 30\n  fill-interval: 1h\n  expire-interval: 1h\n  playbook-timeout: 120\nnodepools:\n  concrete:\n{}{}",
            ansible_bin().join("ansible-playbook").display(),
            dir.path().join("state").display(),
            pool("good", 3, "ok.yml", true),
            pool("bad", 1, "fail.yml", false),
        ),
    );
    let log = dir.path().join("scheduler.log");
    let child = duffy_cmd(Some(&cfg.path), &["scheduler"])
        .env("DUFFY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", mport)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no metrics listener: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // good: 3 provision jobs done; bad: one job failed twice (retried, then given up)
    db.wait_for(
        "SELECT (SELECT count(*) FROM duffy_jobs WHERE pool = 'good' AND state = 'done')
             || ',' || (SELECT count(*) FROM duffy_jobs WHERE pool = 'bad' AND state = 'failed')",
        "3,1",
        Duration::from_secs(180),
    );
    let jobs = |pool: &str, state: &str| -> f64 {
        db.one(&format!(
            "SELECT count(*) FROM duffy_jobs WHERE pool = '{pool}' AND state = '{state}'"
        ))
        .parse()
        .unwrap()
    };
    let attempts = |pool: &str| -> f64 {
        db.one(&format!(
            "SELECT COALESCE(sum(attempts), 0) FROM duffy_jobs WHERE pool = '{pool}'"
        ))
        .parse()
        .unwrap()
    };
    let (good_done, bad_failed, bad_attempts) =
        (jobs("good", "done"), jobs("bad", "failed"), attempts("bad"));
    assert_eq!((good_done, bad_failed, bad_attempts), (3.0, 1.0, 2.0));
    let text = eventually(mport, Duration::from_secs(30), &log, |text| {
        let m = samples(text);
        let v = |s: &str| get(&m, s).unwrap_or(-1.0);
        let want = [
            (
                r#"duffy_scheduler_jobs_total{kind="provision",pool="good",outcome="done"}"#,
                good_done,
            ),
            (
                r#"duffy_scheduler_jobs_total{kind="provision",pool="bad",outcome="retried"}"#,
                bad_attempts - bad_failed,
            ),
            (
                r#"duffy_scheduler_jobs_total{kind="provision",pool="bad",outcome="failed"}"#,
                bad_failed,
            ),
            (
                r#"duffy_scheduler_jobs_total{kind="provision",pool="bad",outcome="done"}"#,
                0.0,
            ),
            (
                r#"duffy_playbook_duration_seconds_count{pool="good",kind="provision",result="ok"}"#,
                attempts("good"),
            ),
            (
                r#"duffy_playbook_duration_seconds_count{pool="bad",kind="provision",result="failed"}"#,
                bad_attempts,
            ),
            (r#"duffy_scheduler_jobs_running{kind="provision"}"#, 0.0),
            (
                r#"duffy_pool_filled_nodes{pool="good"}"#,
                db_filled(&db, "good"),
            ),
            (r#"duffy_pool_deficit_nodes{pool="good"}"#, 0.0),
        ];
        for (s, n) in want {
            if v(s) != n {
                return Err(format!("{s}: {} != {n} (database)", v(s)));
            }
        }
        let nodes = db_nodes(&db);
        for ((pool, st), n) in nodes {
            let s = format!("duffy_nodes{{pool=\"{pool}\",state=\"{st}\"}}");
            if v(&s) != n {
                return Err(format!("{s}: {} != {n} (database)", v(&s)));
            }
        }
        Ok(())
    });
    promtool_accepts(&text);
    let m = samples(&text);
    assert_nodes_match(&m, &db, &["good", "bad"]);
    assert_eq!(must(&m, "duffy_nodes{pool=\"good\",state=\"ready\"}"), 3.0);
    assert_eq!(must(&m, "duffy_nodes{pool=\"bad\",state=\"failed\"}"), 1.0);
    assert_eq!(must(&m, r#"duffy_pool_deficit_nodes{pool="bad"}"#), 1.0);
    assert!(must(&m, r#"duffy_scheduler_passes_total{result="ok"}"#) >= 1.0);
    assert!(must(&m, "duffy_scheduler_last_successful_pass_timestamp_seconds") > 1.7e9);
    let inf = r#"duffy_playbook_duration_seconds_bucket{pool="good",kind="provision",result="ok",le="+Inf"}"#;
    assert_eq!(must(&m, inf), good_done);
    assert_eq!(must(&m, "duffy_db_pool_max_connections"), 8.0);
    assert!(must(&m, "process_resident_memory_bytes") > 1e6);
    // one path only
    assert_eq!(http(mport, "GET", "/", &[], "").0, 404);
    assert_eq!(http(mport, "POST", "/metrics", &[], "").0, 405);

    // everything the alerts and the dashboard name is something serve or the scheduler exposes
    let srv = Server::start(&cfg.path);
    let mut exposed = family_names(&text);
    exposed.extend(family_names(&scrape(srv.port, &[])));
    let mut exprs: Vec<(&str, String)> = Vec::new();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("etc/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            exprs.push(("alerts.yml", r["expr"].as_str().unwrap().to_string()));
        }
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("etc/grafana/duffy.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(("duffy.json", t["expr"].as_str().unwrap().to_string()));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["definition"].as_str() {
            exprs.push(("duffy.json", q.to_string()));
        }
    }
    let re = regex::Regex::new(r"\b((?:duffy|process)_[a-z_]+)").unwrap();
    let mut named = BTreeSet::new();
    for (f, e) in &exprs {
        for c in re.captures_iter(e) {
            let n = c[1].to_string();
            let n = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|f| exposed.contains(*f)))
                .unwrap_or(&n)
                .to_string();
            named.insert((*f, n));
        }
    }
    assert!(named.len() > 10, "{named:?}");
    for (f, n) in &named {
        assert!(
            exposed.contains(n),
            "{f} names {n}, which duffy does not expose ({exposed:?})"
        );
    }
}

#[test]
fn scheduler_refuses_a_metrics_address_it_cannot_listen_on() {
    let db = TestDb::migrated();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "scheduler:\n  metrics-listen: 127.0.0.1:{port}\n  state-dir: {}\n",
            dir.path().display()
        ),
    );
    let o = output_within(
        duffy_cmd(Some(&cfg.path), &["scheduler"]),
        Duration::from_secs(30),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "scheduler.metrics-listen: cannot listen on 127.0.0.1:{port}"
        )),
        "{err}"
    );
}

#[test]
fn alert_rules_pass_promtool_and_fire_in_their_unit_tests() {
    let dir = repo().join("etc/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"],
    ] {
        let o = Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    // every alert has a unit test in which it fires
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - exp_labels"
                )),
                "{name} is never shown firing in alerts.test.yml"
            );
        }
    }
    // the dashboard is JSON Grafana can import: panels with queries
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("etc/grafana/duffy.json")).unwrap(),
    )
    .unwrap();
    let panels = d["panels"].as_array().unwrap();
    assert!(panels
        .iter()
        .filter(|p| p["type"] != "row")
        .all(|p| { p["targets"].as_array().is_some_and(|t| !t.is_empty()) }));
}
