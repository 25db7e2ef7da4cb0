//! Concurrency stress test of allocation: two `duffy serve` processes on one database, many
//! clients of several tenants creating and retiring sessions at once, while a recycler (acting
//! as the scheduler, through the library's state machine) returns torn-down nodes to `ready`.
//! Asserts: no node is ever in two active sessions, no tenant ever exceeds its quota, every
//! 201 carries exactly the nodes requested, and every failure is an expected 403/422.
mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use duffy::db::nodes::{self, NodeChanges, TransitionRequest};
use duffy::state::{Actor, NodeState};
use serde_json::Value;

fn request(port: u16, method: &str, path: &str, auth: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Plays the scheduler: every `deprovisioning` node back to `ready` through the state machine
/// (`deprovisioning → unused → provisioning → ready`), in one transaction. How many.
async fn recycle(db: &duffy::db::Db) -> usize {
    let mut c = db.get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let ids: Vec<i32> = tx
        .query("SELECT id FROM nodes WHERE state = 'deprovisioning'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (from, to) in [
        (NodeState::Deprovisioning, NodeState::Unused),
        (NodeState::Unused, NodeState::Provisioning),
        (NodeState::Provisioning, NodeState::Ready),
    ] {
        nodes::transition_exact(
            &*tx,
            &TransitionRequest {
                node_ids: &ids,
                from: &[from],
                to,
                actor: Actor::Scheduler,
                reason: Some("stress recycler"),
                session_id: None,
                changes: NodeChanges {
                    data_remove: vec!["nodes_spec".into()],
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    ids.len()
}

const CLIENTS: usize = 16;
const QUOTA: i64 = 12;

#[test]
fn concurrent_allocation_never_double_allocates_or_exceeds_quota() {
    let requests: usize = std::env::var("DUFFY_STRESS_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, &pools_yaml(&[("stress-a", 20), ("stress-b", 10)]));
    add_ready_nodes(&tdb, "stress-a", 24, 201);
    add_ready_nodes(&tdb, "stress-b", 12, 202);
    let tenants: Vec<(String, String)> = (0..4)
        .map(|i| {
            let name = format!("t{i}");
            let key = create_tenant(&cfg.path, &name, &["--node-quota", &QUOTA.to_string()]);
            (name, basic_credentials(&format!("t{i}"), &key))
        })
        .collect();
    let servers = [Server::start(&cfg.path), Server::start(&cfg.path)];
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let created = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));

    // The monitor: checks the invariants in the database while the load runs.
    let monitor = {
        let (url, stop, violations) = (tdb.url.clone(), stop.clone(), violations.clone());
        std::thread::spawn(move || {
            duffy::db::block_on(async move {
                let db = duffy::db::Db::connect(&url, 1).await.unwrap();
                let c = db.get().await.unwrap();
                let mut rounds = 0;
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    rounds += 1;
                    let tx_rows = c
                        .query(
                            "SELECT sn.node_id, count(*) FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
                             WHERE s.retired_at IS NULL GROUP BY sn.node_id HAVING count(*) > 1",
                            &[],
                        )
                        .await
                        .unwrap();
                    for r in tx_rows {
                        let id: i32 = r.get(0);
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("node {id} in two active sessions"));
                    }
                    let over = c
                        .query(
                            "SELECT s.tenant_id, count(*) FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
                             WHERE s.retired_at IS NULL GROUP BY s.tenant_id HAVING count(*) > $1",
                            &[&QUOTA],
                        )
                        .await
                        .unwrap();
                    for r in over {
                        let (t, n): (i32, i64) = (r.get(0), r.get(1));
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("tenant {t} holds {n} > {QUOTA} nodes"));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                rounds
            })
        })
    };

    // The recycler: plays the scheduler, returning torn-down nodes to ready via the state machine.
    let recycler = {
        let (url, stop) = (tdb.url.clone(), stop.clone());
        std::thread::spawn(move || {
            duffy::db::block_on(async move {
                let db = duffy::db::Db::connect(&url, 1).await.unwrap();
                let mut recycled = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    recycled += recycle(&db).await;
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
                recycled
            })
        })
    };

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (name, auth) = tenants[i % tenants.len()].clone();
        let port = ports[i % ports.len()];
        let (violations, created, statuses) =
            (violations.clone(), created.clone(), statuses.clone());
        clients.push(std::thread::spawn(move || {
            let mut mine: Vec<i64> = Vec::new();
            for r in 0..requests {
                // mostly create; retire when holding sessions
                if !mine.is_empty() && (r % 3 == 2 || mine.len() > 2) {
                    let id = mine.remove(0);
                    let (st, _) = request(
                        port,
                        "PUT",
                        &format!("/api/v1/sessions/{id}"),
                        &auth,
                        r#"{"active": false}"#,
                    );
                    *statuses.lock().unwrap().entry(st).or_default() += 1;
                    if st != 200 {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{name}: retire {id} -> {st}"));
                    }
                    continue;
                }
                let (qa, qb) = (1 + (r % 3) as i64, (r % 2) as i64);
                let mut specs = vec![format!(r#"{{"pool": "stress-a", "quantity": {qa}}}"#)];
                if qb > 0 {
                    specs.push(format!(r#"{{"pool": "stress-b", "quantity": {qb}}}"#));
                }
                let body = format!(r#"{{"nodes_specs": [{}]}}"#, specs.join(", "));
                let (st, v) = request(port, "POST", "/api/v1/sessions", &auth, &body);
                *statuses.lock().unwrap().entry(st).or_default() += 1;
                match st {
                    201 => {
                        created.fetch_add(1, Ordering::Relaxed);
                        let nodes = v["session"]["nodes"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        let count =
                            |p: &str| nodes.iter().filter(|n| n["pool"] == p).count() as i64;
                        if count("stress-a") != qa || count("stress-b") != qb {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name}: got wrong nodes {v}"));
                        }
                        if nodes.iter().any(|n| n["state"] != "deployed") {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name}: node not deployed {v}"));
                        }
                        mine.push(v["session"]["id"].as_i64().unwrap());
                    }
                    403 => {
                        let d = v["detail"].as_str().unwrap_or("");
                        if !d.starts_with("quota exceeded") {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name}: unexpected 403 {v}"));
                        }
                    }
                    422 => {
                        let d = v["detail"].as_str().unwrap_or("");
                        if !d.starts_with("can't reserve nodes") {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("{name}: unexpected 422 {v}"));
                        }
                    }
                    other => violations
                        .lock()
                        .unwrap()
                        .push(format!("{name}: status {other}: {v}")),
                }
            }
            for id in mine {
                request(
                    port,
                    "PUT",
                    &format!("/api/v1/sessions/{id}"),
                    &auth,
                    r#"{"active": false}"#,
                );
            }
        }));
    }
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = monitor.join().unwrap();
    let recycled = recycler.join().unwrap();
    let v = violations.lock().unwrap();
    eprintln!(
        "stress: {} creates ok, statuses {:?}, monitor rounds {rounds}, recycled {recycled}",
        created.load(Ordering::Relaxed),
        statuses.lock().unwrap()
    );
    assert!(
        v.is_empty(),
        "{} violations, first: {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
    assert!(
        created.load(Ordering::Relaxed) > CLIENTS,
        "the load allocated too little to prove anything"
    );
    // every node is accounted for: none lost in contextualizing, none duplicated
    let states = tdb.query_strings("SELECT string_agg(state::text || '=' || n, ',' ORDER BY state) FROM (SELECT state, count(*) n FROM nodes GROUP BY state) s");
    assert!(
        !states[0]
            .clone()
            .unwrap_or_default()
            .contains("contextualizing"),
        "{states:?}"
    );
    assert_eq!(
        tdb.query_strings("SELECT count(*) FROM nodes")[0].as_deref(),
        Some("36")
    );
}

/// A stand-in for `ssh` (config `contextualize.ssh`) that takes a moment to install a key:
/// sessions stay `contextualizing` long enough for concurrent retires and expiries to hit.
const SLOW_SSH: &str =
    "#!/bin/sh\ncase \"$*\" in *cat*) cat >/dev/null; sleep 0.05;; esac\nexit 0\n";

/// Issue 12: the contextualization window (nodes `contextualizing`, the session visible in
/// `GET /sessions`) under load: clients create sessions on an SSH-contextualized pool through
/// two servers, snipers retire sessions they see while their keys are being installed, an
/// expirer retires random sessions the way the scheduler's expiry does, a recycler returns
/// torn-down nodes. Asserts at all times: no `deployed` node without an active session, no
/// node in two active sessions; every answer an expected one (never 5xx); at the end no node
/// left `contextualizing` and none lost.
#[test]
fn contextualization_window_survives_concurrent_retires_and_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("ssh");
    std::fs::write(&ssh, SLOW_SSH).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(
        &tdb.url,
        &format!(
            "contextualize:\n  ssh: {}\n  timeout: 20s\nnodepools:\n  concrete:\n    ctx:\n      fill-level: 10\n      contextualize: ssh\n      mechanism: {{type: ansible, ansible: {{provision: {{playbook: p.yml}}}}}}\n",
            ssh.display()
        ),
    );
    add_ready_nodes(&tdb, "ctx", 16, 203);
    let tenants: Vec<(String, String)> = (0..4)
        .map(|i| {
            let name = format!("c{i}");
            let key = create_tenant(&cfg.path, &name, &["--node-quota", "6"]);
            (name.clone(), basic_credentials(&name, &key))
        })
        .collect();
    let servers = [Server::start(&cfg.path), Server::start(&cfg.path)];
    let ports: Vec<u16> = servers.iter().map(|s| s.port).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let note = |statuses: &Mutex<HashMap<String, usize>>, what: String| {
        *statuses.lock().unwrap().entry(what).or_default() += 1;
    };

    // the database side: monitor (invariants), expirer (the scheduler's expiry), recycler
    let background = {
        let (url, path, stop, violations) = (
            tdb.url.clone(),
            cfg.path.clone(),
            stop.clone(),
            violations.clone(),
        );
        std::thread::spawn(move || {
            duffy::db::block_on(async move {
                let config = duffy::config::load_from(&[&path]).unwrap();
                let db = duffy::db::Db::connect(&url, 2).await.unwrap();
                let (mut expired, mut rounds) = (0usize, 0usize);
                while !stop.load(Ordering::Relaxed) || rounds == 0 {
                    rounds += 1;
                    let mut c = db.get().await.unwrap();
                    let bad = c
                        .query(
                            "SELECT n.id::text || ' ' || n.state::text FROM nodes n
                             WHERE n.state = 'deployed' AND NOT EXISTS (
                               SELECT 1 FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
                               WHERE sn.node_id = n.id AND s.retired_at IS NULL)
                             UNION ALL
                             SELECT sn.node_id::text || ' in two active sessions' FROM sessions_nodes sn
                             JOIN sessions s ON s.id = sn.session_id WHERE s.retired_at IS NULL
                             GROUP BY sn.node_id HAVING count(*) > 1",
                            &[],
                        )
                        .await
                        .unwrap();
                    for r in bad {
                        let what: String = r.get(0);
                        violations.lock().unwrap().push(format!("node {what}"));
                    }
                    // expire one random active session, as the scheduler does
                    let tx = c.transaction().await.unwrap();
                    let id: Option<i32> = tx
                        .query_opt(
                            "SELECT id FROM sessions WHERE retired_at IS NULL
                             ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED",
                            &[],
                        )
                        .await
                        .unwrap()
                        .map(|r| r.get(0));
                    if let Some(id) = id {
                        if rounds % 3 == 0 {
                            duffy::alloc::retire_locked(&*tx, &config, id, "expirer")
                                .await
                                .unwrap();
                            expired += 1;
                        }
                    }
                    tx.commit().await.unwrap();
                    drop(c);
                    recycle(&db).await;
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
                (expired, rounds)
            })
        })
    };

    let mut threads = Vec::new();
    for i in 0..8 {
        let (name, auth) = tenants[i % tenants.len()].clone();
        let port = ports[i % ports.len()];
        let (violations, statuses) = (violations.clone(), statuses.clone());
        let sniper = i % 2 == 1;
        threads.push(std::thread::spawn(move || {
            for r in 0..60 {
                if sniper {
                    // retire whatever of this tenant is being contextualized right now
                    let (st, v) = request(port, "GET", "/api/v1/sessions", &auth, "");
                    note(&statuses, format!("GET {st}"));
                    for s in v["sessions"].as_array().cloned().unwrap_or_default() {
                        let busy = s["nodes"]
                            .as_array()
                            .is_some_and(|n| n.iter().any(|n| n["state"] == "contextualizing"));
                        if busy || r % 5 == 0 {
                            let id = s["id"].as_i64().unwrap();
                            let path = format!("/api/v1/sessions/{id}");
                            let (st, v) =
                                request(port, "PUT", &path, &auth, r#"{"active": false}"#);
                            let retired = v["detail"]
                                .as_str()
                                .is_some_and(|d| d.ends_with("is retired"));
                            note(&statuses, format!("retire {st}"));
                            if st != 200 && !(st == 422 && retired) {
                                violations
                                    .lock()
                                    .unwrap()
                                    .push(format!("{name}: retire {id} -> {st} {v}"));
                            }
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                let q = 1 + (r % 2);
                let body = format!(r#"{{"nodes_specs": [{{"pool": "ctx", "quantity": {q}}}]}}"#);
                let (st, v) = request(port, "POST", "/api/v1/sessions", &auth, &body);
                let d = v["detail"].as_str().unwrap_or("");
                let expected = match st {
                    201 => v["session"]["nodes"]
                        .as_array()
                        .is_some_and(|n| n.iter().all(|n| n["state"] == "deployed")),
                    403 => d.starts_with("quota exceeded"),
                    422 => {
                        d.starts_with("can't reserve nodes")
                            || d.ends_with("was retired while its nodes were being contextualized")
                    }
                    _ => false,
                };
                note(&statuses, format!("create {st}"));
                if !expected {
                    violations
                        .lock()
                        .unwrap()
                        .push(format!("{name}: create -> {st} {v}"));
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (expired, rounds) = background.join().unwrap();
    let v = violations.lock().unwrap();
    eprintln!(
        "contextualization stress: {:?}, expired {expired}, monitor rounds {rounds}",
        statuses.lock().unwrap()
    );
    assert!(
        v.is_empty(),
        "{} violations, first: {:?}",
        v.len(),
        &v[..v.len().min(5)]
    );
    assert!(
        statuses
            .lock()
            .unwrap()
            .get("create 201")
            .is_some_and(|n| *n > 8),
        "the load allocated too little to prove anything"
    );
    assert_eq!(
        tdb.query_strings("SELECT count(*) FROM nodes WHERE state = 'contextualizing'")[0]
            .as_deref(),
        Some("0"),
        "nodes left contextualizing"
    );
    assert_eq!(
        tdb.query_strings("SELECT count(*) FROM nodes")[0].as_deref(),
        Some("16")
    );
}
