//! The beanstalkd event bus (`duffy::bus`, `events.beanstalkd`) against a real beanstalkd
//! (Debian's package, installed by `.ci/beanstalkd.sh`; each test starts its own on a free port,
//! with a binlog where it restarts it) and real PostgreSQL:
//! an end-to-end session through `duffy serve` + `duffy scheduler` with beanstalkd and the
//! scheduler killed and restarted in the middle — every transition arrives, in order; a
//! transaction that commits after a later-numbered one is not skipped; two deliverers never
//! publish an event twice; changes written by other tools (plain SQL, as upstream's) are
//! published once, duffy's own once with their actor; invalid config names its key.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use duffy::bus::beanstalkd::Client;
use serde_json::Value;

/// `beanstalkd`, installed by `.ci/beanstalkd.sh` when missing (once per test process).
fn beanstalkd_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let o = Command::new("bash")
            .arg(repo().join(".ci/beanstalkd.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run .ci/beanstalkd.sh");
        assert!(
            o.status.success(),
            ".ci/beanstalkd.sh failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let o = Command::new("sh")
            .args(["-c", "command -v beanstalkd"])
            .output()
            .unwrap();
        PathBuf::from(stdout(&o).trim())
    })
}

/// A beanstalkd of the test's own, on `port`, with a binlog in `dir` (jobs survive a restart).
struct Beanstalkd {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Beanstalkd {
    fn start() -> Beanstalkd {
        Self::start_with(&[])
    }

    /// With more options (`-z BYTES`: its max job size).
    fn start_with(extra: &[&str]) -> Beanstalkd {
        let mut b = Beanstalkd {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.restart();
        b
    }

    /// Start it (again) on the same port and binlog.
    fn restart(&mut self) {
        self.kill();
        let child = Command::new(beanstalkd_bin())
            .args(["-l", "127.0.0.1", "-p", &self.port.to_string(), "-b"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start beanstalkd");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "beanstalkd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: what a crash or a power cut of the process does (the binlog keeps the jobs).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Beanstalkd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A consumer as the README shows it: reserve, remember the event, delete; reconnects when
/// beanstalkd goes away; dedupes by event id (delivery is at least once).
struct Consumer {
    events: Arc<Mutex<Vec<Value>>>,
    /// jobs received with an id seen before
    duplicates: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    fn start(addr: String, tube: &str) -> Consumer {
        let events = Arc::new(Mutex::new(Vec::new()));
        let duplicates = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, dup, st, tube) = (
            events.clone(),
            duplicates.clone(),
            stop.clone(),
            tube.to_string(),
        );
        let thread = std::thread::spawn(move || {
            duffy::db::block_on(async move {
                let mut seen = HashSet::new();
                while !st.load(Ordering::SeqCst) {
                    let mut c = match Client::connect(&addr, Duration::from_secs(2)).await {
                        Ok(c) => c,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    if c.watch(&tube).await.is_err() || c.ignore("default").await.is_err() {
                        continue;
                    }
                    while !st.load(Ordering::SeqCst) {
                        let job = match c.reserve(1).await {
                            Ok(Some(j)) => j,
                            Ok(None) => continue,
                            Err(_) => break,
                        };
                        let v: Value = serde_json::from_slice(&job.body).expect("JSON job");
                        let id = v["id"].as_i64().expect("event id");
                        if seen.insert(id) {
                            ev.lock().unwrap().push(v);
                        } else {
                            *dup.lock().unwrap() += 1;
                        }
                        if c.delete(job.id).await.is_err() {
                            break;
                        }
                    }
                }
            })
        });
        Consumer {
            events,
            duplicates,
            stop,
            thread: Some(thread),
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    fn wait_count(&self, n: usize, timeout: Duration, what: &str) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let ev = self.events();
            if ev.len() >= n {
                return ev;
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: {} of {n} events received: {ev:#?}",
                ev.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bus_yaml(addr: &str, tube: &str) -> String {
    format!("events:\n  beanstalkd:\n    address: {addr}\n    tube: {tube}\n    poll-interval: 0.5\n    timeout: 2\n")
}

/// The (node, from, to, actor) of every node event, and the history rows duffy wrote.
fn node_moves(events: &[Value]) -> Vec<(i64, String, String, String)> {
    events
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("node."))
        .map(|e| {
            (
                e["node_id"].as_i64().unwrap(),
                e["from_state"].as_str().unwrap_or("-").to_string(),
                e["to_state"].as_str().unwrap_or("-").to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn history(db: &TestDb) -> Vec<(i64, String, String, String)> {
    db.rows(
        "SELECT node_id || ' ' || COALESCE(from_state::text, '-') || ' ' || COALESCE(to_state::text, '-') || ' ' || actor
         FROM duffy_node_history ORDER BY id",
    )
    .iter()
    .map(|r| {
        let p: Vec<&str> = r.split(' ').collect();
        (
            p[0].parse().unwrap(),
            p[1].into(),
            p[2].into(),
            p[3].into(),
        )
    })
    .collect()
}

/// Per node, its moves in order.
fn per_node(
    moves: &[(i64, String, String, String)],
) -> BTreeMap<i64, Vec<(String, String, String)>> {
    let mut m: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for (n, f, t, a) in moves {
        m.entry(*n)
            .or_default()
            .push((f.clone(), t.clone(), a.clone()));
    }
    m
}

/// The events arrived in commit order: `seq` never goes down, and within one transaction the
/// ids go up.
fn assert_commit_order(events: &[Value]) {
    for w in events.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let (sa, sb) = (a["seq"].as_i64().unwrap(), b["seq"].as_i64().unwrap());
        assert!(
            sa < sb || (sa == sb && a["id"].as_i64() < b["id"].as_i64()),
            "out of order: {a} then {b}"
        );
    }
}

const PROVISION: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: one result per node
      set_fact:
        acc: "{{ acc | default([]) + [{'ipaddr': '127.9.0.' ~ item.id, 'hostname': 'n' ~ item.id ~ '.test'}] }}"
      loop: "{{ duffy_in.nodes }}"
    - name: report
      set_fact:
        duffy_out:
          nodes: "{{ acc }}"
"#;

const DEPROVISION: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: report
      set_fact:
        duffy_out:
          nodes: "{{ duffy_in.nodes | map(attribute='data') | map(attribute='provision') | list }}"
"#;

/// A `duffy scheduler` daemon (SIGKILLed on drop: the test kills it on purpose too).
struct Daemon(Child, PathBuf);

impl Daemon {
    fn start(cfg: &Path, log: PathBuf) -> Daemon {
        let f = std::fs::File::create(&log).unwrap();
        let child = duffy_cmd(Some(cfg), &["scheduler"])
            .env("DUFFY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Daemon(child, log)
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_end_to_end_session_arrives_in_order_across_beanstalkd_and_duffy_restarts() {
    let mut bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("provision.yml"), PROVISION).unwrap();
    std::fs::write(top.join("deprovision.yml"), DEPROVISION).unwrap();
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "scheduler:\n  ansible-playbook: {}\n  job-log-dir: {}\n  state-dir: {}\n  fill-interval: 1h\n  expire-interval: 1h\n  lease: 30\n\
             nodepools:\n  concrete:\n    lab:\n      fill-level: 2\n      contextualize: none\n      mechanism:\n        type: ansible\n        ansible:\n          topdir: {}\n          provision: {{playbook: provision.yml}}\n          deprovision: {{playbook: deprovision.yml}}\n{}",
            ansible_bin().join("ansible-playbook").display(),
            dir.path().join("logs").display(),
            dir.path().join("state").display(),
            top.display(),
            bus_yaml(&bs.addr(), "duffy-e2e"),
        ),
    );
    let consumer = Consumer::start(bs.addr(), "duffy-e2e");
    let mut sched = Daemon::start(&cfg.path, dir.path().join("sched1.log"));
    let server = Server::start(&cfg.path);
    let key = create_tenant(&cfg.path, "tnt", &[]);
    let client = |args: &[&str]| -> Value {
        let url = format!("{}/api/v1", server.url());
        let mut a = vec![
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            &key,
        ];
        a.extend_from_slice(args);
        serde_json::from_str(&ok(&duffy(None, &a))).expect("JSON from duffy client")
    };
    let long = Duration::from_secs(120);
    db.wait_for(
        "SELECT count(*) FROM nodes WHERE state = 'ready'",
        "2",
        long,
    );
    let v = client(&["request-session", "pool=lab,quantity=2"]);
    let session = v["session"]["id"].as_i64().expect("session id");
    db.wait_for(
        "SELECT count(*) FROM nodes WHERE state = 'deployed'",
        "2",
        long,
    );
    // so far: 2 created + 2 provisioned (×2 nodes of the refill happen later), the session
    let before = consumer.wait_count(history(&db).len() + 1, long, "events before the restarts");
    assert!(before
        .iter()
        .any(|e| e["kind"] == "session.created" && e["session_id"] == session));

    // beanstalkd dies; the session is retired, torn down and the pool refilled meanwhile; the
    // scheduler is killed during the outage and started again
    bs.kill();
    client(&["retire-session", &session.to_string()]);
    db.wait_for("SELECT count(*) FROM nodes WHERE state = 'done'", "2", long);
    let waiting = db.one("SELECT count(*) FROM duffy_event_commits");
    assert_ne!(
        waiting, "0",
        "nothing waited in the outbox during the outage"
    );
    drop(sched);
    sched = Daemon::start(&cfg.path, dir.path().join("sched2.log"));
    db.wait_for(
        "SELECT count(*) FROM nodes WHERE state = 'ready'",
        "2",
        long,
    );
    bs.restart();
    db.wait_for("SELECT count(*) FROM duffy_event_commits", "0", long);
    let hist = history(&db);
    let events = consumer.wait_count(hist.len() + 2, long, "every transition");
    assert_eq!(events.len(), hist.len() + 2, "{events:#?}");
    let logs = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("sched1.log")).unwrap_or_default(),
        sched.log()
    );
    assert!(
        logs.contains("event bus: beanstalkd"),
        "the outage was not logged: {logs}"
    );

    // every node transition once, each node's in the order of its history, with its actor
    assert_eq!(per_node(&node_moves(&events)), per_node(&hist));
    // 4 nodes created and provisioned (2 moves each), 2 of them lent and torn down (4 more each)
    assert_eq!(hist.len(), 4 * 2 + 2 * 4, "{hist:?}");
    assert_commit_order(&events);
    // the session's own events, around its nodes': created before they are deployed, retired
    // before they go to deprovisioning, with the tenant as actor
    let pos = |f: &dyn Fn(&Value) -> bool| events.iter().position(f).expect("event");
    let created = pos(&|e| e["kind"] == "session.created");
    let retired = pos(&|e| e["kind"] == "session.retired");
    let deployed = pos(&|e| e["to_state"] == "deployed" && e["session_id"] == session);
    let deprov = pos(&|e| e["to_state"] == "deprovisioning");
    assert!(created < deployed && deployed < retired && retired < deprov);
    for i in [created, retired] {
        assert_eq!(events[i]["actor"], "tnt", "{}", events[i]);
        assert_eq!(
            events[i]["tenant_id"],
            db.one("SELECT id FROM tenants WHERE name = 'tnt'")
                .parse::<i64>()
                .unwrap()
        );
    }
    assert_eq!(events[deployed]["tenant_id"], events[created]["tenant_id"]);
    // the JSON keys of the README
    let keys: Vec<&str> = events[deployed]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "seq",
            "time",
            "kind",
            "node_id",
            "session_id",
            "tenant_id",
            "pool",
            "from_state",
            "to_state",
            "actor",
            "reason"
        ]
    );
    drop(server);
}

/// Run `f` with a pool on `db` in a runtime of its own.
fn with_db<T: Send + 'static>(
    db: &TestDb,
    f: impl FnOnce(duffy::db::Db) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let url = db.url.clone();
    std::thread::spawn(move || {
        duffy::db::block_on(async move {
            let d = duffy::db::Db::connect(&url, 4).await.unwrap();
            f(d).await
        })
    })
    .join()
    .unwrap()
}

fn bus_config(addr: &str, tube: &str) -> duffy::config::BeanstalkdConfig {
    let cfg = TestConfig::new("postgresql://x@127.0.0.1/x", &bus_yaml(addr, tube));
    duffy::config::load_from(&[&cfg.path])
        .unwrap()
        .events
        .beanstalkd
        .unwrap()
}

#[test]
fn a_transaction_committing_after_a_later_numbered_one_is_not_skipped() {
    let bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let bcfg = bus_config(&bs.addr(), "late");
    let consumer = Consumer::start(bs.addr(), "late");
    let url = db.url.clone();
    with_db(&db, move |d| {
        Box::pin(async move {
            use duffy::db::nodes::{self, NewNode};
            use duffy::state::{Actor, NodeState};
            duffy::bus::enable(&d).await.unwrap();
            let node = |h: &str| NewNode {
                hostname: Some(h.into()),
                pool: Some("p".into()),
                ..Default::default()
            };
            // A writes first (lower event id) but commits last
            let (mut a, ca) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(ca);
            let ta = a.transaction().await.unwrap();
            nodes::insert(&ta, &node("a"), NodeState::Ready, Actor::Operator, "a")
                .await
                .unwrap();
            let mut c = d.get().await.unwrap();
            let tb = c.transaction().await.unwrap();
            nodes::insert(&*tb, &node("b"), NodeState::Ready, Actor::Operator, "b")
                .await
                .unwrap();
            tb.commit().await.unwrap();
            let mut p = duffy::bus::Publisher::new(bcfg);
            assert_eq!(p.deliver_all(&d).await.unwrap(), 1);
            ta.commit().await.unwrap();
            assert_eq!(p.deliver_all(&d).await.unwrap(), 1);
            assert_eq!(p.deliver_all(&d).await.unwrap(), 0);
        })
    });
    let ev = consumer.wait_count(2, Duration::from_secs(20), "both events");
    // B's event (higher id) first: it committed first; A's was delivered after, not skipped
    assert_eq!(ev[0]["reason"], "b");
    assert_eq!(ev[1]["reason"], "a");
    assert!(ev[0]["id"].as_i64() > ev[1]["id"].as_i64());
    assert!(ev[0]["seq"].as_i64() < ev[1]["seq"].as_i64());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(consumer.events().len(), 2);
    assert_eq!(*consumer.duplicates.lock().unwrap(), 0);
}

#[test]
fn two_deliverers_never_publish_an_event_twice() {
    let bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let bcfg = bus_config(&bs.addr(), "two");
    let consumer = Consumer::start(bs.addr(), "two");
    const N: usize = 300;
    with_db(&db, move |d| {
        Box::pin(async move {
            use duffy::db::nodes::{self, NewNode};
            use duffy::state::{Actor, NodeState};
            duffy::bus::enable(&d).await.unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let mut deliverers = Vec::new();
            for _ in 0..2 {
                let (d, done, cfg) = (d.clone(), done.clone(), bcfg.clone());
                deliverers.push(tokio::spawn(async move {
                    let mut p = duffy::bus::Publisher::new(cfg);
                    let mut total = 0;
                    loop {
                        let last = done.load(Ordering::SeqCst);
                        total += p.deliver_all(&d).await.unwrap();
                        if last {
                            return total;
                        }
                    }
                }));
            }
            for i in 0..N {
                let c = d.get().await.unwrap();
                nodes::insert(
                    &**c,
                    &NewNode {
                        hostname: Some(format!("n{i}")),
                        ..Default::default()
                    },
                    NodeState::Unused,
                    Actor::Operator,
                    "load",
                )
                .await
                .unwrap();
            }
            done.store(true, Ordering::SeqCst);
            let mut total = 0;
            for t in deliverers {
                total += t.await.unwrap();
            }
            assert_eq!(total, N, "events published by both deliverers together");
        })
    });
    let ev = consumer.wait_count(N, Duration::from_secs(60), "all events");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(consumer.events().len(), N);
    assert_eq!(
        *consumer.duplicates.lock().unwrap(),
        0,
        "an event was published twice"
    );
    assert_commit_order(&ev);
}

#[test]
fn changes_by_other_tools_are_published_once_and_duffys_with_their_actor() {
    let bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let bcfg = bus_config(&bs.addr(), "mixed");
    let consumer = Consumer::start(bs.addr(), "mixed");
    with_db(&db, |d| {
        Box::pin(async move { duffy::bus::enable(&d).await.unwrap() })
    });
    // what upstream's tools do: plain SQL on its tables
    db.exec("INSERT INTO tenants (name, ssh_key, api_key) VALUES ('up', 'k', 'x')");
    db.exec("INSERT INTO nodes (hostname, state, pool) VALUES ('u1', 'provisioning', 'p')");
    db.exec("UPDATE nodes SET state = 'ready' WHERE hostname = 'u1'");
    db.exec("UPDATE nodes SET comment = 'no state change' WHERE hostname = 'u1'");
    db.exec("INSERT INTO sessions (tenant_id) SELECT id FROM tenants WHERE name = 'up'");
    db.exec("INSERT INTO sessions_nodes (session_id, node_id, pool) SELECT s.id, n.id, 'p' FROM sessions s, nodes n");
    db.exec("UPDATE nodes SET state = 'deployed' WHERE hostname = 'u1'");
    db.exec("UPDATE sessions SET retired_at = now()");
    // duffy's own transition (an operator's, as `duffy_node` does it)
    let id: i32 = db
        .one("SELECT id FROM nodes WHERE hostname = 'u1'")
        .parse()
        .unwrap();
    let bcfg2 = bcfg.clone();
    with_db(&db, move |d| {
        Box::pin(async move {
            use duffy::db::nodes::{self, NodeChanges, TransitionRequest};
            use duffy::state::{Actor, NodeState};
            let c = d.get().await.unwrap();
            nodes::transition(
                &**c,
                &TransitionRequest {
                    node_ids: &[id],
                    from: &[NodeState::Deployed],
                    to: NodeState::Deprovisioning,
                    actor: Actor::Operator,
                    reason: Some("taken out"),
                    session_id: None,
                    changes: NodeChanges::default(),
                },
            )
            .await
            .unwrap();
            duffy::bus::Publisher::new(bcfg)
                .deliver_all(&d)
                .await
                .unwrap();
        })
    });
    db.exec("DELETE FROM sessions_nodes");
    db.exec("DELETE FROM nodes");
    with_db(&db, move |d| {
        Box::pin(async move {
            duffy::bus::Publisher::new(bcfg2)
                .deliver_all(&d)
                .await
                .unwrap();
        })
    });
    let ev = consumer.wait_count(7, Duration::from_secs(20), "events");
    std::thread::sleep(Duration::from_millis(300));
    let ev_all = consumer.events();
    assert_eq!(ev_all.len(), 7, "{ev_all:#?}");
    let got: Vec<(String, String, String, String)> = ev
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["from_state"].as_str().unwrap_or("-").to_string(),
                e["to_state"].as_str().unwrap_or("-").to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String, String)> = [
        ("node.created", "-", "provisioning", "db:postgres"),
        ("node.transition", "provisioning", "ready", "db:postgres"),
        ("session.created", "-", "active", "db:postgres"),
        ("node.transition", "ready", "deployed", "db:postgres"),
        ("session.retired", "active", "retired", "db:postgres"),
        ("node.transition", "deployed", "deprovisioning", "operator"),
        ("node.deleted", "deprovisioning", "-", "db:postgres"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(got, want);
    // the node lent by plain SQL carries its session and tenant
    assert_eq!(ev[3]["session_id"], ev[2]["session_id"]);
    assert_eq!(ev[3]["tenant_id"], ev[2]["tenant_id"]);
    assert_eq!(ev[5]["reason"], "taken out");
}

#[test]
fn invalid_bus_settings_are_refused_naming_the_key() {
    let db = "postgresql://x@127.0.0.1/x";
    for (yaml, key) in [
        ("events:\n  beanstalkd:\n    tube: x\n", "events.beanstalkd"),
        (
            "events:\n  beanstalkd:\n    address: 'host:99999'\n",
            "events.beanstalkd.address",
        ),
        (
            "events:\n  beanstalkd:\n    address: 'a b:1'\n",
            "events.beanstalkd.address",
        ),
        (
            "events:\n  beanstalkd:\n    address: h\n    tube: '-x'\n",
            "events.beanstalkd.tube",
        ),
        (
            "events:\n  beanstalkd:\n    address: h\n    max-job-size: 10\n",
            "events.beanstalkd.max-job-size",
        ),
        (
            "events:\n  beanstalkd:\n    address: h\n    ttr: 0\n",
            "events.beanstalkd.ttr",
        ),
        (
            "events:\n  beanstalkd:\n    address: h\n    tubes: x\n",
            "events.beanstalkd",
        ),
    ] {
        let cfg = TestConfig::new(db, yaml);
        let o = duffy(Some(&cfg.path), &["config", "check"]);
        assert_eq!(o.status.code(), Some(2), "{yaml}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(key), "{yaml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let cfg = TestConfig::new(db, "events:\n  beanstalkd:\n    address: localhost\n");
    let out = ok(&duffy(Some(&cfg.path), &["config", "check"]));
    assert!(
        out.contains("Event bus: beanstalkd localhost:11300, tube duffy (events.beanstalkd)\n"),
        "{out}"
    );
}

#[test]
fn the_example_consumer_prints_each_event_once_in_order() {
    let bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let bcfg = bus_config(&bs.addr(), "example");
    let addr = bs.addr();
    with_db(&db, move |d| {
        Box::pin(async move {
            use duffy::db::nodes::{self, NewNode};
            use duffy::state::{Actor, NodeState};
            duffy::bus::enable(&d).await.unwrap();
            for i in 0..3 {
                let c = d.get().await.unwrap();
                let n = NewNode {
                    hostname: Some(format!("e{i}")),
                    ..Default::default()
                };
                nodes::insert(&**c, &n, NodeState::Unused, Actor::Operator, "x")
                    .await
                    .unwrap();
            }
            let mut p = duffy::bus::Publisher::new(bcfg.clone());
            assert_eq!(p.deliver_all(&d).await.unwrap(), 3);
            // what a crash of duffy between INSERTED and its cursor update leaves: the second
            // event put again, after the others
            let mut c = Client::connect(&addr, Duration::from_secs(2))
                .await
                .unwrap();
            c.use_tube("example").await.unwrap();
            let mut r = Client::connect(&addr, Duration::from_secs(2))
                .await
                .unwrap();
            r.watch("example").await.unwrap();
            r.ignore("default").await.unwrap();
            let mut bodies = Vec::new();
            while let Some(j) = r.reserve(0).await.unwrap() {
                bodies.push(j.body);
            }
            drop(r); // reserved jobs go back to ready
            c.put(bcfg.priority, 60, &bodies[1]).await.unwrap();
            // and one more event after it
            let conn = d.get().await.unwrap();
            let n = NewNode {
                hostname: Some("e3".into()),
                ..Default::default()
            };
            nodes::insert(&**conn, &n, NodeState::Unused, Actor::Operator, "x")
                .await
                .unwrap();
            assert_eq!(p.deliver_all(&d).await.unwrap(), 1);
        })
    });
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("etc/events/consumer.py")).args([
        "--address",
        &bs.addr(),
        "--tube",
        "example",
        "--count",
        "4",
    ]);
    let o = output_within(cmd, Duration::from_secs(60));
    let lines: Vec<Value> = ok(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let hosts: Vec<i64> = lines
        .iter()
        .map(|e| e["node_id"].as_i64().unwrap())
        .collect();
    assert_eq!(hosts, [1, 2, 3, 4], "{lines:#?}");
    assert_commit_order(&lines);
}

#[test]
fn job_size_is_bounded_by_max_job_size_with_a_clear_error_when_beanstalkd_allows_less() {
    let bs = Beanstalkd::start_with(&["-z", "2048"]);
    let db = TestDb::migrated();
    let too_big = bus_config(&bs.addr(), "size"); // max-job-size 65535 (the default)
    let mut fits = too_big.clone();
    fits.max_job_size = 2048;
    let consumer = Consumer::start(bs.addr(), "size");
    let err = with_db(&db, move |d| {
        Box::pin(async move {
            use duffy::db::nodes::{self, NewNode};
            use duffy::state::{Actor, NodeState};
            duffy::bus::enable(&d).await.unwrap();
            let c = d.get().await.unwrap();
            let reason = "playbook failed: ".to_string() + &"é…".repeat(3000);
            nodes::insert(
                &**c,
                &NewNode::default(),
                NodeState::Failed,
                Actor::Scheduler,
                &reason,
            )
            .await
            .unwrap();
            let err = duffy::bus::Publisher::new(too_big)
                .deliver_all(&d)
                .await
                .unwrap_err()
                .to_string();
            // nothing was lost: the same event goes out once the setting fits beanstalkd's
            assert_eq!(
                duffy::bus::Publisher::new(fits)
                    .deliver_all(&d)
                    .await
                    .unwrap(),
                1
            );
            err
        })
    });
    assert!(
        err.contains("JOB_TOO_BIG") && err.contains("events.beanstalkd.max-job-size (65535)"),
        "{err}"
    );
    let ev = consumer.wait_count(1, Duration::from_secs(20), "the event");
    assert_eq!(ev[0]["reason_truncated"], true);
    let r = ev[0]["reason"].as_str().unwrap();
    assert!(
        r.starts_with("playbook failed: é…é…") && r.len() > 1000,
        "{r}"
    );
    assert!(serde_json::to_vec(&ev[0]).unwrap().len() <= 2048);
}

#[test]
fn scheduler_once_publishes_what_waits() {
    let bs = Beanstalkd::start();
    let db = TestDb::migrated();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "scheduler:\n  state-dir: {}\n{}",
            dir.path().display(),
            bus_yaml(&bs.addr(), "once")
        ),
    );
    let consumer = Consumer::start(bs.addr(), "once");
    // the first run enables the bus; what is committed afterwards waits for the next
    ok(&duffy_cmd(Some(&cfg.path), &["scheduler", "--once"])
        .output()
        .unwrap());
    db.exec("INSERT INTO nodes (hostname, state, pool) VALUES ('w1', 'ready', 'p')");
    assert_eq!(db.one("SELECT count(*) FROM duffy_events"), "1");
    let o = duffy_cmd(Some(&cfg.path), &["scheduler", "--once"])
        .env("DUFFY_LOG", "info")
        .output()
        .unwrap();
    ok(&o);
    assert!(
        stderr(&o).contains("event bus: 1 events published"),
        "{}",
        stderr(&o)
    );
    let ev = consumer.wait_count(1, Duration::from_secs(20), "the waiting event");
    assert_eq!(ev[0]["kind"], "node.created");
    assert_eq!(db.one("SELECT count(*) FROM duffy_events"), "0");
}
