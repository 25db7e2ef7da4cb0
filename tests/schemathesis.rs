//! schemathesis (property-based API fuzzing, PyPI) against `duffy serve` and its own OpenAPI
//! document (`/api/v1/openapi.json`): no 5xx, no dropped connection, and every response
//! conforms to the document (status codes, content types, headers, body schemas; 405 with
//! `Allow` for undeclared methods).
//!
//! The venv is installed by `.ci/schemathesis.sh` (idempotent; `DUFFY_ST_VENV` to relocate).
//! The run is bounded (`DUFFY_ST_MAX_EXAMPLES` test cases per operation and phase, default 30)
//! and seeded (`DUFFY_ST_SEED`, default fixed; `random` for a new seed each run).
//!
//! The fuzzer authenticates as an admin. `PUT /tenants/{id}` can reset or retire the tenant it
//! names — the admin itself included — so that operation runs separately, pinned to a victim
//! tenant, after everything else.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,unsupported_method";
const UPDATE_TENANT: &str = "update_tenant_api_v1_tenants__id__put";

/// Run `st` with `args` in `dir`, killing it after `limit`; returns (success, output).
fn st(st_bin: &Path, dir: &Path, args: &[String], limit: Duration) -> (bool, String) {
    let log = dir.join(format!("st-{}.log", args.len()));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(st_bin)
        .args(args)
        .current_dir(dir) // hypothesis / schemathesis caches stay in the temp dir
        .env("NO_COLOR", "1")
        .env("COLUMNS", "120")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("run st");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{text}\n*** st killed after {limit:?}")),
    }
}

/// `GET /api/v1/tenants/1` as the admin; the response text.
fn admin_probe(port: u16, key: &str) -> String {
    use base64::Engine;
    use std::io::{Read, Write};
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{key}"));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /api/v1/tenants/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn summary(out: &str) -> String {
    out.lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("Test cases:")
                || t.contains(" generated, ")
                || t.starts_with("Seed:")
                || t.starts_with("=====") && (t.contains(" in ") || t.contains("passed"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn schemathesis_finds_no_server_errors() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let venv =
        std::env::var("DUFFY_ST_VENV").unwrap_or_else(|_| format!("{repo}/.venv-schemathesis"));
    let o = Command::new("bash")
        .arg(format!("{repo}/.ci/schemathesis.sh"))
        .env("DUFFY_ST_VENV", &venv)
        .output()
        .expect("run .ci/schemathesis.sh");
    assert!(
        o.status.success(),
        ".ci/schemathesis.sh failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let st_bin = Path::new(&venv).join("bin/st");

    // a server with pools, ready nodes, an admin, a victim tenant and a session
    let db = TestDb::migrated();
    // an abstract pool too: `GET /pools/base` answers 422
    let yaml = format!(
        "{}  abstract:\n    base:\n      contextualize: none\n",
        pools_yaml(&[("p1", 5), ("p2", 5)])
    );
    let cfg = TestConfig::new(&db.url, &yaml);
    add_ready_nodes(&db, "p1", 60, 1);
    add_ready_nodes(&db, "p2", 60, 2);
    let admin_key = create_tenant(&cfg.path, "admin", &["--is-admin"]);
    create_tenant(&cfg.path, "victim", &["--node-quota", "5"]);
    let victim_id = db.query_strings("SELECT id FROM tenants WHERE name = 'victim'")[0]
        .clone()
        .unwrap();
    db.exec(
        "INSERT INTO sessions (tenant_id, expires_at, data)
         SELECT id, now() AT TIME ZONE 'utc' + interval '1 hour', '{\"nodes_specs\": []}'
         FROM tenants WHERE name = 'victim'",
    );
    let srv = Server::start(&cfg.path);

    let work = tempfile::tempdir().unwrap();
    let toml = work.path().join("schemathesis.toml");
    std::fs::write(
        &toml,
        format!(
            "[[operations]]\ninclude-operation-id = \"{UPDATE_TENANT}\"\nparameters = {{ \"path.id\" = {victim_id} }}\n"
        ),
    )
    .unwrap();
    let n = std::env::var("DUFFY_ST_MAX_EXAMPLES").unwrap_or_else(|_| "30".into());
    let seed = std::env::var("DUFFY_ST_SEED").unwrap_or_else(|_| "20261125".into());
    let base = |only_update_tenant: bool| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--config-file".into(),
            toml.display().to_string(),
            "run".into(),
            format!("{}/api/v1/openapi.json", srv.url()),
            "--auth".into(),
            format!("admin:{admin_key}"),
            "--checks".into(),
            CHECKS.into(),
            "--max-examples".into(),
            n.clone(),
            "--workers".into(),
            "2".into(),
            "--request-timeout".into(),
            "30".into(),
            "--no-color".into(),
        ];
        if seed != "random" {
            a.extend(["--seed".into(), seed.clone()]);
        }
        a.push(
            if only_update_tenant {
                "--include-operation-id"
            } else {
                "--exclude-operation-id"
            }
            .into(),
        );
        a.push(UPDATE_TENANT.into());
        a
    };

    let started = Instant::now();
    let (ok, out) = st(&st_bin, work.path(), &base(false), Duration::from_secs(240));
    assert!(
        ok,
        "schemathesis failed (all operations but {UPDATE_TENANT}):\n{out}"
    );
    eprintln!("schemathesis, 12 operations:\n{}", summary(&out));
    // the admin survived: its key works and it is still an active admin
    let probe = admin_probe(srv.port, &admin_key);
    assert!(
        probe.contains("\"active\":true") && probe.contains("\"is_admin\":true"),
        "the admin was damaged: {probe}"
    );
    let (ok, out) = st(&st_bin, work.path(), &base(true), Duration::from_secs(120));
    assert!(ok, "schemathesis failed ({UPDATE_TENANT}):\n{out}");
    eprintln!("schemathesis, {UPDATE_TENANT}:\n{}", summary(&out));
    eprintln!("schemathesis took {:?}", started.elapsed());
}
