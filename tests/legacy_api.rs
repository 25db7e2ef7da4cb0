//! The legacy metaclient API (compat spec §5): `duffy serve` on its second listener and
//! `duffy serve-legacy`, against a real PostgreSQL over real HTTP — every endpoint and failure
//! body byte for byte as upstream's metaclient answers (bodies checked against upstream 3.4.0's
//! metaclient in front of duffy's v1 API) — and the REAL `cico` CLI (python-cicoclient from PyPI,
//! installed by `.ci/upstream-clients-venv.sh`) driving `inventory`, `node get`, `node done`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const X86: &str = "virtual-centos8stream-x86_64-small";
const ARM: &str = "virtual-centos9stream-aarch64-medium";
/// usermap keys that are not any tenant's API key
const WRONG_KEY: &str = "00000000-0000-4000-8000-00000000000a";
const NOSUCH_TENANT_KEY: &str = "00000000-0000-4000-8000-00000000000b";
const UNMAPPED_KEY: &str = "00000000-0000-4000-8000-00000000000c";

const NOT_AUTHENTICATED: &str = r#"{"detail":"Not authenticated"}"#;
const FORBIDDEN: &str = r#"{"detail":"Forbidden"}"#;
const INVALID_KEY: &str = r#"{"msg":"Invalid duffy key"}"#;
const FAILED_ALLOCATE: &str = r#""Failed to allocate nodes""#;
const FAILED_RETURN: &str = r#""Failed to return nodes on completion""#;
const FAILED_EXTEND: &str = r#""Failed to change expiration time""#;
const ABSENT: &str = r#""Some parameters are absent""#;
const DONE: &str = r#""Done""#;

// ---------------------------------------------------------------------------------------------
// raw HTTP/1.1

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(port: u16, method: &str, target: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: legacy-test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(port: u16, target: &str) -> Reply {
    request(port, "GET", target)
}

/// `GET target` must answer `status` with exactly `body` (JSON).
#[track_caller]
fn expect(port: u16, target: &str, status: u16, body: &str) {
    let r = get(port, target);
    assert_eq!((r.status, r.body.as_str()), (status, body), "GET {target}");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{target}"
    );
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{target}"
    );
}

fn wait_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("duffy exited early: {status}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A spawned `duffy` process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, args: &[&str], port: u16) -> Proc {
    let mut child = duffy_cmd(Some(config), args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn duffy");
    wait_listening(port, &mut child);
    Proc(child)
}

// ---------------------------------------------------------------------------------------------
// set-up

/// ansible-role-duffy's default poolmap (spec §5.2) and a mangling of the test hostnames.
const POOLMAP: &str = r#"  poolmap:
    - arch: '^(aarch64|ppc64|ppc64le)$'
      pool: "virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('medium') }}"
    - arch: x86_64
      pool: "virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('small') }}"
  mangle_hostname: "{{ hostname | replace('.example.net', '') }}"
"#;

struct Env {
    db: TestDb,
    _cfg: TestConfig,
    /// legacy keys = API keys of t1, t2, the admin tenant and a retired tenant
    k1: String,
    k2: String,
    ka: String,
    kr: String,
    server: Server,
    lp: u16,
}

fn metaclient_yaml(keys: &[(&str, &str)], port: Option<u16>) -> String {
    let mut s = String::from("metaclient:\n");
    if let Some(p) = port {
        s.push_str(&format!("  port: {p}\n"));
    }
    s.push_str("  usermap:\n");
    for (k, t) in keys {
        s.push_str(&format!("    {k}: {t}\n"));
    }
    s.push_str(POOLMAP);
    s
}

fn setup() -> Env {
    let db = TestDb::migrated();
    let pools = pools_yaml(&[(X86, 6), (ARM, 2)]);
    let base = TestConfig::new(&db.url, &pools);
    let k1 = create_tenant(&base.path, "t1", &[]);
    let k2 = create_tenant(&base.path, "t2", &[]);
    let ka = create_tenant(&base.path, "boss", &["--is-admin"]);
    let kr = create_tenant(&base.path, "gone", &[]);
    let o = duffy(Some(&base.path), &["admin", "retire-tenant", "gone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = duffy(
        Some(&base.path),
        &["admin", "update-tenant", "t2", "--node-quota", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    add_ready_nodes(&db, X86, 6, 1);
    add_ready_nodes(&db, ARM, 2, 2);
    let meta = metaclient_yaml(
        &[
            (&k1, "t1"),
            (&k2, "t2"),
            (&ka, "boss"),
            (&kr, "gone"),
            (WRONG_KEY, "t1"),
            (NOSUCH_TENANT_KEY, "nosuch"),
        ],
        None,
    );
    let cfg = TestConfig::new(&db.url, &format!("{pools}{meta}"));
    let lp = free_port();
    let lps = lp.to_string();
    let mut server = Server::start_with(&cfg.path, &["--legacy-port", &lps]);
    wait_listening(lp, &mut server.child);
    Env {
        db,
        _cfg: cfg,
        k1,
        k2,
        ka,
        kr,
        server,
        lp,
    }
}

impl Env {
    fn one(&self, sql: &str) -> String {
        self.db
            .query_strings(sql)
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_default()
    }
    fn count(&self, sql: &str) -> i64 {
        self.one(sql).parse().unwrap()
    }
    fn active_sessions(&self) -> i64 {
        self.count("SELECT count(*) FROM sessions WHERE retired_at IS NULL")
    }
    /// (node id, hostname, ipaddr, state, pool) of a session's nodes, by node id
    fn session_nodes(&self, ssid: i64) -> Vec<(i64, String, String, String, String)> {
        self.db
            .query_strings(&format!(
                "SELECT concat_ws('|', n.id, n.hostname, n.ipaddr, n.state, n.pool) FROM sessions_nodes sn \
                 JOIN nodes n ON n.id = sn.node_id WHERE sn.session_id = {ssid} ORDER BY n.id"
            ))
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                let f: Vec<&str> = r.split('|').collect();
                (
                    f[0].parse().unwrap(),
                    f[1].into(),
                    f[2].into(),
                    f[3].into(),
                    f[4].into(),
                )
            })
            .collect()
    }
    fn lifetime_secs(&self, ssid: i64) -> i64 {
        self.count(&format!(
            "SELECT EXTRACT(EPOCH FROM expires_at - created_at)::bigint FROM sessions WHERE id = {ssid}"
        ))
    }
}

fn short(hostname: &str) -> String {
    hostname.trim_end_matches(".example.net").to_string()
}

/// `/Node/get` must succeed; returns (ssid, hosts).
#[track_caller]
fn node_get(e: &Env, query: &str) -> (i64, Vec<String>) {
    let r = get(e.lp, &format!("/Node/get?{query}"));
    assert_eq!(r.status, 200, "{query}: {}", r.body);
    let v = r.json();
    let ssid = v["ssid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{query}: {}", r.body));
    let hosts: Vec<String> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    // exact bytes: {"ssid":N,"hosts":[...]} in this order
    assert_eq!(
        r.body,
        format!(
            "{{\"ssid\":{ssid},\"hosts\":{}}}",
            serde_json::to_string(&hosts).unwrap()
        )
    );
    (ssid, hosts)
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn authentication_parameters_and_routing() {
    let e = setup();
    let lp = e.lp;
    let before = e.count("SELECT count(*) FROM sessions");

    // key missing or empty (all of /Node/*): FastAPI's APIKeyQuery
    for path in ["/Node/get", "/Node/done", "/Node/fail"] {
        expect(lp, path, 403, NOT_AUTHENTICATED);
        expect(lp, &format!("{path}?key="), 403, NOT_AUTHENTICATED);
        expect(
            lp,
            &format!("{path}?key&ssid=1&count=x"),
            403,
            NOT_AUTHENTICATED,
        );
        // not in the usermap: before any parameter is looked at
        expect(
            lp,
            &format!("{path}?key={UNMAPPED_KEY}&count=x&ssid=1"),
            403,
            FORBIDDEN,
        );
    }
    expect(
        lp,
        &format!("/Inventory?key={UNMAPPED_KEY}"),
        403,
        FORBIDDEN,
    );
    // the last of a repeated parameter wins (Starlette)
    expect(
        lp,
        &format!("/Node/done?key={}&key={UNMAPPED_KEY}", e.k1),
        403,
        FORBIDDEN,
    );
    expect(
        lp,
        &format!("/Node/done?key={UNMAPPED_KEY}&key={}", e.k1),
        200,
        ABSENT,
    );

    // count: pydantic integer parsing, 422 in FastAPI's format (after the key check)
    for (raw, shown) in [
        ("x", "x"),
        ("", ""),
        ("1.5", "1.5"),
        ("%2B1x", "+1x"),
        ("1e3", "1e3"),
    ] {
        expect(
            lp,
            &format!("/Node/get?key={}&count={raw}", e.k1),
            422,
            &format!(
                r#"{{"detail":[{{"type":"int_parsing","loc":["query","count"],"msg":"Input should be a valid integer, unable to parse string as an integer","input":"{shown}"}}]}}"#
            ),
        );
    }

    // ssid missing / empty
    for path in ["/Node/done", "/Node/fail"] {
        expect(lp, &format!("{path}?key={}", e.k1), 200, ABSENT);
        expect(lp, &format!("{path}?key={}&ssid=", e.k1), 200, ABSENT);
    }

    // mapped key, but Duffy refuses the (tenant, key) pair: wrong key, unknown tenant, retired
    for key in [WRONG_KEY, NOSUCH_TENANT_KEY, e.kr.as_str()] {
        expect(
            lp,
            &format!("/Node/get?key={key}&ver=8-stream"),
            200,
            FAILED_ALLOCATE,
        );
        expect(
            lp,
            &format!("/Node/done?key={key}&ssid=1"),
            403,
            INVALID_KEY,
        );
        expect(
            lp,
            &format!("/Node/done?key={key}&ssid=abc"),
            403,
            INVALID_KEY,
        );
        expect(
            lp,
            &format!("/Node/fail?key={key}&ssid=1"),
            403,
            INVALID_KEY,
        );
        expect(lp, &format!("/Inventory?key={key}"), 403, INVALID_KEY);
    }

    // anonymous and keyed inventories when nothing is allocated
    expect(lp, "/Inventory", 200, "[]");
    expect(lp, "/Inventory?key=", 200, "[]");
    expect(lp, &format!("/Inventory?key={}", e.k1), 200, "[]");

    // routing like Starlette: 404, 405 + Allow, 307 for a trailing slash (absolute URL)
    expect(lp, "/nope", 404, r#"{"detail":"Not Found"}"#);
    expect(lp, "/inventory", 404, r#"{"detail":"Not Found"}"#);
    expect(lp, "/api/v1/pools", 404, r#"{"detail":"Not Found"}"#);
    for (m, p) in [
        ("POST", "/Node/get"),
        ("PUT", "/Inventory"),
        ("DELETE", "/Node/done"),
    ] {
        let r = request(lp, m, p);
        assert_eq!(
            (r.status, r.body.as_str(), r.header("allow")),
            (405, r#"{"detail":"Method Not Allowed"}"#, Some("GET")),
            "{m} {p}"
        );
    }
    let r = get(lp, "/Node/get/?key=x&count=2");
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some(format!("http://127.0.0.1:{lp}/Node/get?key=x&count=2").as_str())
    );
    assert_eq!(r.body, "");
    let r = get(lp, "/Inventory//");
    assert_eq!(
        (r.status, r.header("location")),
        (
            307,
            Some(format!("http://127.0.0.1:{lp}/Inventory").as_str())
        )
    );
    expect(lp, "/nope/", 404, r#"{"detail":"Not Found"}"#);

    // every response carries a request id
    let r = get(lp, "/Inventory");
    let id = r.header("x-request-id").expect("x-request-id");
    assert_eq!(id.len(), 36, "{id}");

    // upstream's OpenAPI document: apiKey in query `key`, the four paths
    let r = get(lp, "/openapi.json");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["info"]["title"], "Duffy Metaclient for Legacy Support");
    assert_eq!(
        doc["components"]["securitySchemes"]["APIKeyQuery"],
        json!({"type": "apiKey", "in": "query", "name": "key"})
    );
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(
        paths,
        ["/Node/get", "/Node/done", "/Node/fail", "/Inventory"]
    );
    let r = get(lp, "/docs");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/openapi.json"), "{}", r.body);

    // the v1 API still answers on its own port, and none of this wrote anything
    assert_eq!(get(e.server.port, "/api/v1/pools").status, 200);
    assert_eq!(e.count("SELECT count(*) FROM sessions"), before);
}

#[test]
fn node_get_fail_done_and_inventories() {
    let e = setup();
    let lp = e.lp;

    // ---- /Node/get failures: nothing allocated
    for q in [
        format!("key={}&ver=8-stream&arch=i386", e.k1), // no poolmap entry
        format!("key={}&ver=7", e.k1),                  // mapped pool does not exist
        format!("key={}&ver=8-stream&flavor=tiny", e.k1), // idem
        format!("key={}&ver=8-stream&count=0", e.k1),   // v1: quantity >= 1
        format!("key={}&ver=8-stream&count=-3", e.k1),
        format!("key={}&ver=8-stream&count=7", e.k1), // only 6 ready nodes
        format!("key={}&ver=8-stream&count=99999999999999999999999", e.k1),
        format!("key={}&ver=8-stream&count=2", e.k2), // t2's quota is 1
        format!("key={}&ver=9-stream&arch=aarch64&count=3", e.k1), // 2 in that pool
    ] {
        expect(lp, &format!("/Node/get?{q}"), 200, FAILED_ALLOCATE);
    }
    assert_eq!(e.active_sessions(), 0);
    assert_eq!(
        e.count("SELECT count(*) FROM nodes WHERE state = 'ready'"),
        8
    );

    // ---- success: hosts mangled, in the session's order, nodes deployed
    let (s1, hosts1) = node_get(
        &e,
        &format!("key={}&ver=8-stream&arch=x86_64&count=2", e.k1),
    );
    let nodes1 = e.session_nodes(s1);
    assert_eq!(nodes1.len(), 2);
    let mut want: Vec<String> = nodes1.iter().map(|n| short(&n.1)).collect();
    let mut got = hosts1.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(
        nodes1.iter().all(|n| n.3 == "deployed" && n.4 == X86),
        "{nodes1:?}"
    );
    // regex selector + default('medium'); count "1.0" is an integer for pydantic
    let (s2, hosts2) = node_get(
        &e,
        &format!("key={}&ver=9-stream&arch=aarch64&count=1.0", e.k1),
    );
    assert_eq!(e.session_nodes(s2)[0].4, ARM);
    assert_eq!(hosts2.len(), 1);
    // defaults ver=7 arch=x86_64 are used when absent: t2 with an explicit ver
    let (s3, _) = node_get(&e, &format!("key={}&ver=8-stream", e.k2));
    // the admin tenant
    let (s4, _) = node_get(&e, &format!("key={}&ver=8-stream&arch=x86_64", e.ka));
    assert_eq!(e.active_sessions(), 4);

    // ---- /Inventory with a key: [hostname, ssid] per node of the tenant's active sessions
    let pairs = |ssid: i64| -> Vec<Value> {
        e.session_nodes(ssid)
            .iter()
            .map(|n| json!([short(&n.1), ssid]))
            .collect()
    };
    let inv1 = get(lp, &format!("/Inventory?key={}", e.k1)).json();
    let mut want1 = pairs(s1);
    want1.extend(pairs(s2));
    assert_eq!(sorted(inv1), sorted(Value::Array(want1)));
    let inv2 = get(lp, &format!("/Inventory?key={}", e.k2));
    assert_eq!(inv2.body, serde_json::to_string(&pairs(s3)).unwrap());
    // the admin sees every active session
    let inva = get(lp, &format!("/Inventory?key={}", e.ka)).json();
    assert_eq!(inva.as_array().unwrap().len(), 5);

    // ---- anonymous /Inventory: 14 columns, comment = ssid as a string, state lowercase
    let anon = get(lp, "/Inventory");
    assert_eq!(anon.status, 200);
    let rows = anon.json();
    let mut want_rows = Vec::new();
    for s in [s1, s2, s3, s4] {
        for n in e.session_nodes(s) {
            want_rows.push(json!([
                n.0,
                short(&n.1),
                n.2,
                null,
                0,
                "deployed",
                s.to_string(),
                null,
                null,
                null,
                null,
                n.4,
                null,
                null
            ]));
        }
    }
    assert_eq!(sorted(rows.clone()), sorted(Value::Array(want_rows)));
    // exact serialisation of one row (compact JSON, like Starlette's JSONResponse)
    let first = &rows[0];
    assert!(
        anon.body.starts_with(&format!(
            "[[{},\"{}\",\"{}\",null,0,\"deployed\",\"{}\",null,null,null,null,\"{}\",null,null]",
            first[0],
            first[1].as_str().unwrap(),
            first[2].as_str().unwrap(),
            first[6].as_str().unwrap(),
            first[11].as_str().unwrap()
        )),
        "{}",
        anon.body
    );

    // ---- /Node/fail: +6h on the current expiry, clamped to session-lifetime-max (12h)
    assert_eq!(e.lifetime_secs(s1), 6 * 3600);
    expect(lp, &format!("/Node/fail?key={}&ssid={s1}", e.k1), 200, DONE);
    assert_eq!(e.lifetime_secs(s1), 12 * 3600);
    expect(lp, &format!("/Node/fail?key={}&ssid={s1}", e.k1), 200, DONE);
    assert_eq!(e.lifetime_secs(s1), 12 * 3600, "clamped to the max");
    // admins are not clamped
    expect(lp, &format!("/Node/fail?key={}&ssid={s4}", e.ka), 200, DONE);
    expect(lp, &format!("/Node/fail?key={}&ssid={s4}", e.ka), 200, DONE);
    assert_eq!(e.lifetime_secs(s4), 18 * 3600);
    // someone else's session → v1 403; unknown / non-integer ssid → failure text
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid={s1}", e.k2),
        403,
        INVALID_KEY,
    );
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid=999999", e.k1),
        200,
        FAILED_EXTEND,
    );
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid=abc", e.k1),
        200,
        FAILED_EXTEND,
    );
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid=99999999999", e.k1),
        200,
        FAILED_EXTEND,
    );
    // nodes are not marked failed (unlike v2)
    assert!(e.session_nodes(s1).iter().all(|n| n.3 == "deployed"));

    // ---- /Node/done
    expect(
        lp,
        &format!("/Node/done?key={}&ssid={s1}", e.k2),
        403,
        INVALID_KEY,
    );
    assert_eq!(e.active_sessions(), 4, "someone else's session stays");
    expect(
        lp,
        &format!("/Node/done?key={}&ssid=999999", e.k1),
        200,
        FAILED_RETURN,
    );
    expect(
        lp,
        &format!("/Node/done?key={}&ssid=abc", e.k1),
        200,
        FAILED_RETURN,
    );
    expect(lp, &format!("/Node/done?key={}&ssid={s1}", e.k1), 200, DONE);
    assert_eq!(
        e.one(&format!(
            "SELECT retired_at IS NOT NULL FROM sessions WHERE id = {s1}"
        )),
        "t"
    );
    assert!(
        e.session_nodes(s1).iter().all(|n| n.3 == "deprovisioning"),
        "{:?}",
        e.session_nodes(s1)
    );
    // already retired → v1 422 → failure text; retired sessions can't be extended either
    expect(
        lp,
        &format!("/Node/done?key={}&ssid={s1}", e.k1),
        200,
        FAILED_RETURN,
    );
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid={s1}", e.k1),
        200,
        FAILED_EXTEND,
    );
    // pydantic path-parameter parsing of the ssid: " 2.0 " is 2
    expect(
        lp,
        &format!("/Node/done?key={}&ssid=%20{s2}.0%20", e.k1),
        200,
        DONE,
    );
    // admins may retire anyone's session
    expect(lp, &format!("/Node/done?key={}&ssid={s3}", e.ka), 200, DONE);

    // retired sessions leave both inventories
    expect(lp, &format!("/Inventory?key={}", e.k1), 200, "[]");
    expect(lp, &format!("/Inventory?key={}", e.k2), 200, "[]");
    let rows = get(lp, "/Inventory").json();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0][6], json!(s4.to_string()));
}

fn sorted(v: Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// the real cico CLI

/// The clients venv (`duffy[client]==3.4.0`, `python-cicoclient`), installed by the project's
/// script when missing or incomplete (idempotent, serialised by a lock).
fn cico_bin() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = std::env::var_os("DUFFY_CLIENTS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv-clients"));
    let cico = venv.join("bin/cico");
    if !cico.exists() {
        let st = Command::new("bash")
            .arg(repo.join(".ci/upstream-clients-venv.sh"))
            .env("DUFFY_CLIENTS_VENV", &venv)
            .status()
            .expect("run .ci/upstream-clients-venv.sh");
        assert!(st.success(), ".ci/upstream-clients-venv.sh failed: {st}");
    }
    assert!(
        cico.exists(),
        "{} missing after the venv script",
        cico.display()
    );
    cico
}

fn cico(bin: &Path, home: &Path, lp: u16, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.env_remove("CICO_API_KEY")
        .env("HOME", home)
        .arg("--endpoint")
        .arg(format!("http://127.0.0.1:{lp}/"));
    if let Some(k) = key {
        cmd.arg("--api-key").arg(k);
    }
    cmd.args(args).output().expect("run cico")
}

#[track_caller]
fn cico_json(bin: &Path, home: &Path, lp: u16, key: Option<&str>, args: &[&str]) -> Vec<Value> {
    let mut a = args.to_vec();
    a.extend(["-f", "json"]);
    let o = cico(bin, home, lp, key, &a);
    assert!(
        o.status.success(),
        "cico {args:?}: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    match serde_json::from_str(&stdout(&o)) {
        Ok(Value::Array(v)) => v,
        other => panic!("cico {args:?}: {other:?}: {}", stdout(&o)),
    }
}

#[test]
fn real_cico_cli_against_the_legacy_api() {
    let bin = cico_bin();
    let e = setup();
    let lp = e.lp;
    let home = tempfile::tempdir().unwrap(); // no ~/.duffy.key
    let h = home.path();

    // nothing allocated yet
    assert!(cico_json(&bin, h, lp, None, &["inventory"]).is_empty());
    assert!(cico_json(&bin, h, lp, Some(&e.k1), &["inventory"]).is_empty());

    // cico node get --arch x86_64 --release 8-stream --count 1
    let got = cico_json(
        &bin,
        h,
        lp,
        Some(&e.k1),
        &[
            "node",
            "get",
            "--arch",
            "x86_64",
            "--release",
            "8-stream",
            "--count",
            "1",
        ],
    );
    assert_eq!(got.len(), 1, "{got:?}");
    let host = &got[0];
    let ssid: i64 = host["comment"].as_str().unwrap().parse().unwrap();
    let nodes = e.session_nodes(ssid);
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(
        host,
        &json!({"host_id": n.0, "hostname": short(&n.1), "ip_address": n.2, "chassis": null,
                "used_count": 0, "current_state": "deployed", "comment": ssid.to_string(),
                "distro": null, "rel": null, "centos_version": null, "architecture": null,
                "node_pool": X86, "console_port": null, "flavor": null})
    );
    // another tenant's session, to tell the inventories apart
    let other = cico_json(
        &bin,
        h,
        lp,
        Some(&e.ka),
        &["node", "get", "--arch", "aarch64", "--release", "9-stream"],
    );
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["node_pool"], ARM);

    // cico inventory: with a key (self inventory), --all, --ssid, without a key
    let mine = cico_json(&bin, h, lp, Some(&e.k1), &["inventory"]);
    assert_eq!(mine, vec![host.clone()]);
    let all = cico_json(&bin, h, lp, Some(&e.k1), &["inventory", "--all"]);
    assert_eq!(all.len(), 2);
    assert_eq!(cico_json(&bin, h, lp, None, &["inventory"]).len(), 2);
    let by_ssid = cico_json(
        &bin,
        h,
        lp,
        None,
        &["inventory", "--ssid", &ssid.to_string()],
    );
    assert_eq!(by_ssid, vec![host.clone()]);

    // failures: "Failed to allocate nodes" is a JSON string → ValueError, no retry (spec §12.27)
    let t = Instant::now();
    let o = cico(
        &bin,
        h,
        lp,
        Some(&e.k1),
        &[
            "node",
            "get",
            "--arch",
            "x86_64",
            "--release",
            "8-stream",
            "--count",
            "50",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Failed to allocate nodes"),
        "{}",
        stderr(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(10), "cico retried");
    let o = cico(&bin, h, lp, Some(&e.k1), &["node", "get", "--arch", "i386"]);
    assert!(!o.status.success() && stderr(&o).contains("Failed to allocate nodes"));
    // an unmapped key: 403 {"detail":"Forbidden"} is a dict without `hosts` → KeyError
    let o = cico(&bin, h, lp, Some(UNMAPPED_KEY), &["node", "get"]);
    assert!(
        !o.status.success() && stderr(&o).contains("hosts"),
        "{}",
        stderr(&o)
    );
    assert_eq!(e.active_sessions(), 2, "failed requests allocate nothing");

    // cico node done <ssid>: lists the released hosts, the session is retired
    let done = cico_json(
        &bin,
        h,
        lp,
        Some(&e.k1),
        &["node", "done", &ssid.to_string()],
    );
    assert_eq!(done, vec![host.clone()]);
    assert_eq!(
        e.one(&format!(
            "SELECT retired_at IS NOT NULL FROM sessions WHERE id = {ssid}"
        )),
        "t"
    );
    assert!(cico_json(&bin, h, lp, Some(&e.k1), &["inventory"]).is_empty());
    assert_eq!(cico_json(&bin, h, lp, None, &["inventory"]).len(), 1);
    // the API key from ~/.duffy.key (cicoclient's lookup order)
    std::fs::write(h.join(".duffy.key"), format!("{}\n", e.ka)).unwrap();
    let admins = cico_json(&bin, h, lp, None, &["inventory"]);
    assert_eq!(admins.len(), 1);
    assert_eq!(admins[0]["node_pool"], ARM);
}

// ---------------------------------------------------------------------------------------------
// serving options

#[test]
fn serve_listeners_serve_legacy_and_config_errors() {
    let db = TestDb::migrated();
    let pools = pools_yaml(&[(X86, 2)]);
    let base = TestConfig::new(&db.url, &pools);
    let k1 = create_tenant(&base.path, "t1", &[]);
    add_ready_nodes(&db, X86, 2, 3);

    // metaclient.port from the config when no --legacy-port is given
    let lp = free_port();
    let cfg = TestConfig::new(
        &db.url,
        &format!("{pools}{}", metaclient_yaml(&[(&k1, "t1")], Some(lp))),
    );
    let mut a = Server::start(&cfg.path);
    wait_listening(lp, &mut a.child);
    expect(lp, &format!("/Inventory?key={k1}"), 200, "[]");

    // --no-legacy: the same config, and the legacy port is not even bound (A holds it)
    let b = Server::start_with(&cfg.path, &["--no-legacy"]);
    assert_eq!(get(b.port, "/api/v1/pools").status, 200);

    // the legacy port taken → `duffy serve` fails with a clear message
    let o = duffy(
        Some(&cfg.path),
        &["serve", "-p", &free_port().to_string(), "--no-migrate"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("127.0.0.1:{lp}")) && stderr(&o).contains("legacy"),
        "{}",
        stderr(&o)
    );
    drop(a);

    // serve-legacy: only the legacy API; -D/--dest accepted and unused
    let sp = free_port();
    let sps = sp.to_string();
    let _legacy = spawn(
        &cfg.path,
        &[
            "serve-legacy",
            "-p",
            &sps,
            "-D",
            "http://127.0.0.1:1/unused",
        ],
        sp,
    );
    expect(sp, "/api/v1/pools", 404, r#"{"detail":"Not Found"}"#);
    let r = get(sp, &format!("/Node/get?key={k1}&ver=8-stream&count=2"));
    assert_eq!(r.status, 200);
    let ssid = r.json()["ssid"].as_i64().expect("ssid");
    expect(sp, &format!("/Node/done?key={k1}&ssid={ssid}"), 200, DONE);
    let o = duffy(Some(&cfg.path), &["serve-legacy", "--help"]);
    assert!(stdout(&o).contains("--dest") && stdout(&o).contains("unused"));

    // serve-legacy without a metaclient section: usage error
    let o = duffy(
        Some(&base.path),
        &["serve-legacy", "-p", &free_port().to_string()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("metaclient"), "{}", stderr(&o));

    // invalid templates / selectors: config errors naming the key, before anything listens
    for (map, key) in [
        (
            "  poolmap: [{pool: ok}, {pool: '{{ ver '}]\n",
            "metaclient.poolmap[1].pool",
        ),
        (
            "  poolmap: [{pool: 'x-{{ ver | nosuchfilter }}'}]\n",
            "metaclient.poolmap[0].pool",
        ),
        (
            "  poolmap: [{arch: '^(x86_64$', pool: p}]\n",
            "metaclient.poolmap[0].arch",
        ),
        (
            "  mangle_hostname: '{% if %}'\n",
            "metaclient.mangle_hostname",
        ),
    ] {
        let bad = TestConfig::new(&db.url, &format!("{pools}metaclient:\n{map}"));
        let file = bad.path.display().to_string();
        for args in [
            vec!["serve", "-p", "1", "--no-migrate"],
            vec!["serve-legacy", "-p", "1"],
        ] {
            let o = duffy(Some(&bad.path), &args);
            assert_eq!(o.status.code(), Some(2), "{args:?} {map}: {}", stderr(&o));
            assert!(
                stderr(&o).contains(&format!("{file}: {key}: invalid")),
                "{args:?} {map}: {}",
                stderr(&o)
            );
        }
        // --no-legacy does not need the metaclient section to be valid
        let p = free_port();
        let ps = p.to_string();
        drop(spawn(
            &bad.path,
            &["serve", "-p", &ps, "--no-migrate", "--no-legacy"],
            p,
        ));
    }
}

/// `app.anonymous-reads: false` closes the legacy API's anonymous `/Inventory` too (it is the
/// anonymous `GET /api/v1/sessions` in another shape): the answer of `/Node/*` without a key.
#[test]
fn anonymous_inventory_follows_app_anonymous_reads() {
    let db = TestDb::migrated();
    let pools = pools_yaml(&[(X86, 2)]);
    let base = TestConfig::new(&db.url, &pools);
    let k1 = create_tenant(&base.path, "t1", &[]);
    add_ready_nodes(&db, X86, 2, 4);
    let lp = free_port();
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "app: {{anonymous-reads: false}}\n{pools}{}",
            metaclient_yaml(&[(&k1, "t1")], Some(lp))
        ),
    );
    let mut srv = Server::start(&cfg.path);
    wait_listening(lp, &mut srv.child);
    let r = get(lp, &format!("/Node/get?key={k1}&ver=8-stream&count=1"));
    assert_eq!(r.status, 200, "{}", r.body);
    for anon in ["/Inventory", "/Inventory?key="] {
        expect(lp, anon, 403, NOT_AUTHENTICATED);
    }
    // with a key: as before
    let rows = get(lp, &format!("/Inventory?key={k1}")).json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    // the v1 listener of the same server refuses anonymous reads
    expect(srv.port, "/api/v1/sessions", 401, NOT_AUTHENTICATED);
}

/// Issue 12: a NUL character in a query parameter never reaches PostgreSQL (the v1 outcome is a
/// 422, so upstream's legacy body for a failure; no internal error), and the trailing-slash
/// redirect never names another host.
#[test]
fn nul_parameters_and_redirects_stay_harmless() {
    let e = setup();
    let lp = e.lp;
    for q in [
        format!("key={}&ver=8%00", e.k1),
        format!("key={}&ver=8-stream&flavor=a%00b", e.k1),
        format!("key={}&ver=8-stream&arch=x86_64%00", e.k1),
    ] {
        expect(lp, &format!("/Node/get?{q}"), 200, FAILED_ALLOCATE);
    }
    let r = get(lp, &format!("/Node/get?key={}&count=1%00", e.k1));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["query", "count"]));
    expect(
        lp,
        &format!("/Node/done?key={}&ssid=1%00", e.k1),
        200,
        FAILED_RETURN,
    );
    expect(
        lp,
        &format!("/Node/fail?key={}&ssid=%00", e.k1),
        200,
        FAILED_EXTEND,
    );
    expect(lp, "/Node/get?key=a%00b", 403, FORBIDDEN);
    expect(lp, &format!("/Inventory?key={}%00", e.k1), 403, FORBIDDEN);
    assert_eq!(e.count("SELECT count(*) FROM sessions"), 0);
    let log = e.server.log();
    assert!(!log.contains("internal error"), "{log}");

    for path in [
        "//evil.example/",
        "/\\evil.example/",
        "//Inventory/",
        "//Node/get/?key=x",
    ] {
        let r = get(lp, path);
        assert_eq!(
            (r.status, r.header("location"), r.body.as_str()),
            (404, None, r#"{"detail":"Not Found"}"#),
            "GET {path}"
        );
    }
}
