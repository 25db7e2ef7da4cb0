//! The REST API v1 against its contract (compat spec §4): every endpoint and status code of
//! §4.4, the object shapes and field order of §4.5, the auth table of §4.2, validation bodies
//! (§4.3), and the upstream bugs of §12 that duffy fixes (1 quota counting retired sessions,
//! 14 PUT on an absent session, 18 409 details) or keeps (15 offset dropped, 16 shortening,
//! 20 `active` ignored in updates).
//!
//! Each test has its own database and `duffy serve`; requests go through a tiny HTTP/1.1 client
//! over `TcpStream` so that the bytes on the wire (header names, key order) are what is checked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, NaiveDateTime};
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// `{"detail": "<string>"}`
    fn detail(&self) -> String {
        match self.json().get("detail") {
            Some(Value::String(s)) => s.clone(),
            other => panic!("no string detail: {other:?} in {}", self.text()),
        }
    }

    /// The `detail` list of a 422 validation error; each item has `loc`, `msg`, `type`.
    fn validation(&self) -> Vec<Value> {
        assert_eq!(self.status, 422, "{}", self.text());
        let Some(Value::Array(items)) = self.json().get("detail").cloned() else {
            panic!("detail is not a list: {}", self.text());
        };
        assert!(!items.is_empty(), "{}", self.text());
        for it in &items {
            assert!(it["loc"].is_array(), "{it}");
            assert!(it["msg"].is_string(), "{it}");
            assert!(it["type"].is_string(), "{it}");
        }
        items
    }
}

type Auth<'a> = Option<(&'a str, &'a str)>;

fn basic(user: &str, key: &str) -> String {
    format!("Basic {}", basic_credentials(user, key))
}

/// Send one request (`Connection: close`) and read the whole response. Every response must
/// carry an `X-Request-Id` that is a UUIDv4.
/// The payload of a `Transfer-Encoding: chunked` body (None if it is malformed or truncated:
/// a streamed response that was aborted has no final zero-size chunk).
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the response: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status: u16 = status_line[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).unwrap_or_else(|| panic!("{method} {path}: bad chunked body"));
    }
    let r = Resp {
        status,
        headers,
        body,
    };
    let rid = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{method} {path}: no X-Request-Id"));
    let u = uuid::Uuid::parse_str(rid).expect("X-Request-Id is a UUID");
    assert_eq!(u.get_version_num(), 4, "X-Request-Id {rid}");
    if let Some(len) = r.header("content-length") {
        assert_eq!(
            len.parse::<usize>().unwrap(),
            r.body.len(),
            "{method} {path}"
        );
    }
    r
}

struct Api {
    port: u16,
}

impl Api {
    fn req(&self, method: &str, path: &str, auth: Auth, body: Option<&Value>) -> Resp {
        let mut h = Vec::new();
        if let Some((u, k)) = auth {
            h.push(("Authorization", basic(u, k)));
        }
        let b = match body {
            Some(v) => {
                h.push(("Content-Type", "application/json".to_string()));
                serde_json::to_vec(v).unwrap()
            }
            None => Vec::new(),
        };
        send(self.port, method, &format!("/api/v1{path}"), &h, &b)
    }
    fn get(&self, path: &str, auth: Auth) -> Resp {
        self.req("GET", path, auth, None)
    }
    fn post(&self, path: &str, auth: Auth, body: Value) -> Resp {
        self.req("POST", path, auth, Some(&body))
    }
    fn put(&self, path: &str, auth: Auth, body: Value) -> Resp {
        self.req("PUT", path, auth, Some(&body))
    }
    /// A body sent verbatim.
    fn raw_body(&self, method: &str, path: &str, auth: Auth, body: &[u8]) -> Resp {
        let mut h = vec![("Content-Type", "application/json".to_string())];
        if let Some((u, k)) = auth {
            h.push(("Authorization", basic(u, k)));
        }
        send(self.port, method, &format!("/api/v1{path}"), &h, body)
    }
    /// A request with a verbatim `Authorization` header.
    fn with_authz(&self, method: &str, path: &str, authz: &str, body: Option<&Value>) -> Resp {
        let mut h = vec![("Authorization", authz.to_string())];
        let b = match body {
            Some(v) => {
                h.push(("Content-Type", "application/json".to_string()));
                serde_json::to_vec(v).unwrap()
            }
            None => Vec::new(),
        };
        send(self.port, method, &format!("/api/v1{path}"), &h, &b)
    }
}

// ---------------------------------------------------------------------------------------------
// Test environment: database, config, server, an admin tenant

struct Env {
    srv: Server,
    cfg: TestConfig,
    db: TestDb,
    admin_key: String,
}

impl Env {
    /// `extra`: config YAML appended to the database and defaults sections.
    fn new(extra: &str, setup: impl FnOnce(&TestDb)) -> Env {
        let db = TestDb::migrated();
        let cfg = TestConfig::new(&db.url, extra);
        let admin_key = create_tenant(&cfg.path, "admin", &["--is-admin"]);
        setup(&db);
        let srv = Server::start(&cfg.path);
        Env {
            srv,
            cfg,
            db,
            admin_key,
        }
    }

    /// Pools `p1` (fill 3, 3 ready nodes) and `p2` (fill 2, 2 ready nodes).
    fn with_pools() -> Env {
        Env::new(&pools_yaml(&[("p1", 3), ("p2", 2)]), |db| {
            add_ready_nodes(db, "p1", 3, 1);
            add_ready_nodes(db, "p2", 2, 2);
        })
    }

    fn api(&self) -> Api {
        Api {
            port: self.srv.port,
        }
    }

    fn admin(&self) -> Auth<'_> {
        Some(("admin", self.admin_key.as_str()))
    }

    fn tenant(&self, name: &str, extra: &[&str]) -> String {
        create_tenant(&self.cfg.path, name, extra)
    }

    fn tenant_id(&self, name: &str) -> i64 {
        self.scalar(&format!("SELECT id FROM tenants WHERE name = '{name}'"))
            .parse()
            .unwrap()
    }

    fn scalar(&self, sql: &str) -> String {
        self.db
            .query_strings(sql)
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_else(|| panic!("no value: {sql}"))
    }

    fn strings(&self, sql: &str) -> Vec<String> {
        self.db
            .query_strings(sql)
            .into_iter()
            .map(|s| s.unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    fn count(&self, sql: &str) -> i64 {
        self.scalar(sql).parse().unwrap()
    }

    /// States of all nodes of a pool, sorted.
    fn states(&self, pool: &str) -> Vec<String> {
        self.strings(&format!(
            "SELECT state::text FROM nodes WHERE pool = '{pool}' ORDER BY state::text, id"
        ))
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn time(v: &Value) -> NaiveDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    assert!(s.ends_with('Z'), "{s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .naive_utc()
}

fn specs(list: &[(&str, i64)]) -> Value {
    json!({"nodes_specs": list.iter().map(|(p, q)| json!({"pool": p, "quantity": q})).collect::<Vec<_>>()})
}

const TENANT_KEYS: [&str; 13] = [
    "retired_at",
    "active",
    "created_at",
    "name",
    "is_admin",
    "ssh_key",
    "node_quota",
    "session_lifetime",
    "session_lifetime_max",
    "id",
    "effective_node_quota",
    "effective_session_lifetime",
    "effective_session_lifetime_max",
];
const SESSION_KEYS: [&str; 8] = [
    "retired_at",
    "active",
    "created_at",
    "id",
    "expires_at",
    "tenant",
    "data",
    "nodes",
];
const SESSION_NODE_KEYS: [&str; 8] = [
    "hostname", "ipaddr", "comment", "pool", "reusable", "data", "id", "state",
];
const NODE_KEYS: [&str; 11] = [
    "retired_at",
    "active",
    "created_at",
    "hostname",
    "ipaddr",
    "comment",
    "pool",
    "reusable",
    "data",
    "id",
    "state",
];
const MASK: &str = "**********";

// ---------------------------------------------------------------------------------------------
// Pools

#[test]
fn pools_list_show_levels_404_422() {
    let yaml = "nodepools:
  abstract:
    virt:
      contextualize: none
      mechanism: {type: ansible, ansible: {provision: {playbook: provision.yml}}}
  concrete:
    p1: {extends: virt, fill-level: 3}
    p2: {extends: virt, fill-level: 2}
";
    let env = Env::new(yaml, |db| {
        db.exec(
            "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, retired_at) VALUES
             (NULL, NULL, 'provisioning', 'p1', false, NULL),
             ('r1', '127.3.0.1', 'ready', 'p1', false, NULL),
             ('r2', '127.3.0.2', 'ready', 'p1', false, NULL),
             ('c1', '127.3.0.3', 'contextualizing', 'p1', false, NULL),
             ('d1', '127.3.0.4', 'deployed', 'p1', false, NULL),
             ('x1', '127.3.0.5', 'deprovisioning', 'p1', false, NULL),
             ('x2', '127.3.0.6', 'deprovisioning', 'p1', false, NULL),
             ('x3', '127.3.0.7', 'deprovisioning', 'p1', false, NULL),
             ('u1', '127.3.0.8', 'unused', 'p1', true, NULL),
             ('f1', '127.3.0.9', 'failed', 'p1', false, NULL),
             ('old', '127.3.0.10', 'ready', 'p1', false, now()),
             ('done1', '127.3.0.11', 'done', 'p1', false, now()),
             ('q1', '127.3.1.1', 'ready', 'p2', false, NULL)",
        )
    });
    let api = env.api();

    // GET /pools: concrete pools with a fill level, in config order, no auth needed
    let r = api.get("/pools", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"action":"get","pools":[{"name":"p1","fill-level":3},{"name":"p2","fill-level":2}]}"#
    );

    // GET /pools/p1: verbose, levels of non-retired nodes in the five reported states
    let r = api.get("/pools/p1", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        r#"{"action":"get","pool":{"name":"p1","fill-level":3,"levels":{"provisioning":1,"ready":2,"contextualizing":1,"deployed":1,"deprovisioning":3}}}"#
    );
    let r = api.get("/pools/p2", Some(("nobody", "nokey")));
    assert_eq!(r.status, 200, "pools ignore credentials");
    assert_eq!(
        r.json()["pool"]["levels"],
        json!({"provisioning":0,"ready":1,"contextualizing":0,"deployed":0,"deprovisioning":0})
    );

    // unknown → 404; known but without fill-level (abstract) → 422, both with string details
    let r = api.get("/pools/nope", None);
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    let r = api.get("/pools/virt", None);
    assert_eq!(
        (r.status, r.text().as_str()),
        (422, r#"{"detail":"Unprocessable Entity"}"#)
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions: create

#[test]
fn session_create_201_shape_nodes_and_rows() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &["--session-lifetime", "1h30m"]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));

    let r = api.post("/sessions", a, specs(&[("p1", 2), ("p2", 1)]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    let body = r.json();
    assert_eq!(keys(&body), ["action", "session"]);
    assert_eq!(body["action"], "post");
    let s = &body["session"];
    assert_eq!(keys(s), SESSION_KEYS);
    assert_eq!(s["retired_at"], Value::Null);
    assert_eq!(s["active"], true);
    // data.nodes_specs exactly as requested, keys `quantity` then `pool`
    assert!(
        text.contains(
            r#""data":{"nodes_specs":[{"quantity":2,"pool":"p1"},{"quantity":1,"pool":"p2"}]}"#
        ),
        "{text}"
    );
    // the tenant, masked, with float effective lifetimes
    let t = &s["tenant"];
    assert_eq!(keys(t), TENANT_KEYS);
    assert_eq!(t["name"], "alice");
    assert_eq!(t["ssh_key"], MASK);
    assert_eq!(t["is_admin"], false);
    assert_eq!(t["node_quota"], Value::Null);
    assert_eq!(t["effective_node_quota"], 10);
    assert!(
        text.contains(
            r#""effective_session_lifetime":21600.0,"effective_session_lifetime_max":43200.0"#
        ),
        "{text}"
    );
    // expires_at = created_at + the effective lifetime (defaults: 6h)
    let created = time(&s["created_at"]);
    let expires = time(&s["expires_at"]);
    assert_eq!((expires - created).num_seconds(), 6 * 3600);
    // three deployed nodes, each with its nodes_spec
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert_eq!(keys(n), SESSION_NODE_KEYS);
        assert_eq!(n["state"], "deployed");
        assert_eq!(n["reusable"], false);
        assert_eq!(n["comment"], Value::Null);
        let pool = n["pool"].as_str().unwrap();
        let q = if pool == "p1" { 2 } else { 1 };
        assert_eq!(
            n["data"],
            json!({"nodes_spec": {"quantity": q, "pool": pool}})
        );
        assert!(n["ipaddr"].as_str().unwrap().starts_with("127."));
    }
    let sid = s["id"].as_i64().unwrap();
    // database: session row, one sessions_nodes row per node (pool of the spec), nodes deployed
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {sid} AND retired_at IS NULL"
        )),
        1
    );
    assert_eq!(
        env.strings(&format!(
            "SELECT sn.pool || ':' || n.state FROM sessions_nodes sn JOIN nodes n ON n.id = sn.node_id
             WHERE sn.session_id = {sid} ORDER BY sn.pool, n.id"
        )),
        ["p1:deployed", "p1:deployed", "p2:deployed"]
    );
    assert_eq!(env.states("p1"), ["deployed", "deployed", "ready"]);
    assert_eq!(env.states("p2"), ["deployed", "ready"]);
    assert_eq!(
        env.scalar(&format!("SELECT data::text FROM sessions WHERE id = {sid}")),
        r#"{"nodes_specs":[{"quantity":2,"pool":"p1"},{"quantity":1,"pool":"p2"}]}"#
    );

    // a tenant's own lifetime; a lax numeric string quantity (Pydantic accepts "1")
    let r = api.post(
        "/sessions",
        Some(("bob", &bob)),
        json!({"tenant_id": null, "nodes_specs": [{"pool": "p1", "quantity": "1"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let s = &r.json()["session"];
    assert_eq!(
        (time(&s["expires_at"]) - time(&s["created_at"])).num_seconds(),
        5400
    );
    assert_eq!(s["tenant"]["session_lifetime"], 5400);
    assert_eq!(s["tenant"]["effective_session_lifetime"], 5400.0);
    assert_eq!(
        s["data"],
        json!({"nodes_specs": [{"quantity": 1, "pool": "p1"}]})
    );

    // an empty list of specs → a session without nodes
    let r = api.post("/sessions", a, json!({"nodes_specs": []}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["session"]["nodes"], json!([]));
    assert_eq!(r.json()["session"]["data"], json!({"nodes_specs": []}));
}

#[test]
fn session_create_unknown_pool_and_all_or_nothing() {
    let env = Env::with_pools();
    let api = env.api();
    let before =
        env.strings("SELECT id || ':' || state || ':' || data::text FROM nodes ORDER BY id");

    // unknown pool: 422 with upstream's text, nothing allocated
    let r = api.post("/sessions", env.admin(), specs(&[("x", 1)]));
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't reserve nodes: quantity=1 pool='x'".into())
    );

    // the first spec could be served, the second not: nothing of either is taken
    let r = api.post("/sessions", env.admin(), specs(&[("p1", 2), ("p2", 5)]));
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't reserve nodes: quantity=5 pool='p2'".into())
    );
    let r = api.post("/sessions", env.admin(), specs(&[("p2", 1), ("p1", 4)]));
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't reserve nodes: quantity=4 pool='p1'".into())
    );

    assert_eq!(
        env.count("SELECT count(*) FROM sessions"),
        0,
        "no session row remains"
    );
    assert_eq!(env.count("SELECT count(*) FROM sessions_nodes"), 0);
    assert_eq!(
        env.strings("SELECT id || ':' || state || ':' || data::text FROM nodes ORDER BY id"),
        before,
        "no node changed"
    );
    assert_eq!(env.count("SELECT count(*) FROM duffy_node_history"), 0);

    // and the nodes are still there to take
    let r = api.post("/sessions", env.admin(), specs(&[("p1", 3), ("p2", 2)]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["session"]["nodes"].as_array().unwrap().len(), 5);
    let r = api.post("/sessions", env.admin(), specs(&[("p1", 1)]));
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't reserve nodes: quantity=1 pool='p1'".into())
    );
}

#[test]
fn session_create_validation_422() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));

    let one = |r: Resp| -> Value {
        let items = r.validation();
        assert_eq!(items.len(), 1, "{items:?}");
        items[0].clone()
    };

    // missing nodes_specs
    let it = one(api.post("/sessions", a, json!({})));
    assert_eq!(
        it,
        json!({"type": "missing", "loc": ["body", "nodes_specs"], "msg": "Field required", "input": {}})
    );
    // quantity 0 and negative
    for q in [json!(0), json!(-1), json!(-1_000_000)] {
        let it = one(api.post(
            "/sessions",
            a,
            json!({"nodes_specs": [{"pool": "p1", "quantity": q}]}),
        ));
        assert_eq!(it["type"], "greater_than_equal");
        assert_eq!(it["loc"], json!(["body", "nodes_specs", 0, "quantity"]));
        assert_eq!(it["msg"], "Input should be greater than or equal to 1");
        assert_eq!(it["ctx"], json!({"ge": 1}));
        assert_eq!(it["input"], q);
    }
    // huge quantities: a clear bound, not a DB error
    for q in [
        json!(2_147_483_648i64),
        json!(10_000_000_000_000_000_000u64),
        json!(1e30),
    ] {
        let it = one(api.post(
            "/sessions",
            a,
            json!({"nodes_specs": [{"pool": "p1", "quantity": q}]}),
        ));
        assert_eq!(it["type"], "less_than_equal", "{it}");
        assert_eq!(
            it["msg"],
            "Input should be less than or equal to 2147483647"
        );
    }
    // not integers
    for (q, kind) in [
        (json!("abc"), "int_parsing"),
        (json!(1.5), "int_from_float"),
        (json!([1]), "int_type"),
        (json!({}), "int_type"),
    ] {
        let it = one(api.post(
            "/sessions",
            a,
            json!({"nodes_specs": [{"pool": "p1", "quantity": q}]}),
        ));
        assert_eq!(it["type"], kind, "{it}");
        assert_eq!(it["loc"], json!(["body", "nodes_specs", 0, "quantity"]));
    }
    // pool missing / not a string; quantity missing
    let it = one(api.post("/sessions", a, json!({"nodes_specs": [{"quantity": 1}]})));
    assert_eq!(
        (it["type"].as_str(), &it["loc"]),
        (Some("missing"), &json!(["body", "nodes_specs", 0, "pool"]))
    );
    let it = one(api.post(
        "/sessions",
        a,
        json!({"nodes_specs": [{"pool": 5, "quantity": 1}]}),
    ));
    assert_eq!(
        (it["type"].as_str(), &it["loc"]),
        (
            Some("string_type"),
            &json!(["body", "nodes_specs", 0, "pool"])
        )
    );
    let it = one(api.post("/sessions", a, json!({"nodes_specs": [{"pool": "p1"}]})));
    assert_eq!(
        (it["type"].as_str(), &it["loc"]),
        (
            Some("missing"),
            &json!(["body", "nodes_specs", 0, "quantity"])
        )
    );
    // errors of several specs are all reported
    let r = api.post(
        "/sessions",
        a,
        json!({"nodes_specs": [{"pool": "p1", "quantity": 0}, {"pool": "p2", "quantity": "x"}]}),
    );
    assert_eq!(r.validation().len(), 2);
    // nodes_specs not a list / items not objects
    let it = one(api.post("/sessions", a, json!({"nodes_specs": "p1"})));
    assert_eq!(it["loc"], json!(["body", "nodes_specs"]));
    let it = one(api.post("/sessions", a, json!({"nodes_specs": [1]})));
    assert_eq!(it["loc"], json!(["body", "nodes_specs", 0]));
    // tenant_id not an integer
    let it = one(api.post(
        "/sessions",
        a,
        json!({"tenant_id": "me", "nodes_specs": []}),
    ));
    assert_eq!(
        (it["type"].as_str(), &it["loc"]),
        (Some("int_parsing"), &json!(["body", "tenant_id"]))
    );
    // malformed JSON
    let it = one(api.raw_body("POST", "/sessions", a, b"{\"nodes_specs\": ["));
    assert_eq!(it["type"], "json_invalid");
    assert_eq!(it["msg"], "JSON decode error");
    assert_eq!(it["loc"][0], "body");
    let it = one(api.raw_body("POST", "/sessions", a, b"nodes_specs=1"));
    assert_eq!(it["type"], "json_invalid");
    // no body at all
    let it = one(api.raw_body("POST", "/sessions", a, b""));
    assert_eq!(it["type"], "missing");
    assert_eq!(it["loc"], json!(["body"]));
    // a JSON body that is not an object
    for b in [&b"[]"[..], b"null", b"42", b"\"nodes\""] {
        let it = one(api.raw_body("POST", "/sessions", a, b));
        assert_eq!(it["loc"], json!(["body"]), "{}", String::from_utf8_lossy(b));
    }
    // unknown keys are ignored
    let r = api.post("/sessions", a, json!({"nodes_specs": [], "colour": "blue"}));
    assert_eq!(r.status, 201, "{}", r.text());

    // nothing but that last empty session was written, no node touched
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 1);
    assert_eq!(env.count("SELECT count(*) FROM sessions_nodes"), 0);
    assert_eq!(
        env.count("SELECT count(*) FROM nodes WHERE state <> 'ready'"),
        0
    );
}

#[test]
fn session_create_quota_counts_only_active_sessions() {
    let env = Env::new(&pools_yaml(&[("p1", 10)]), |db| {
        add_ready_nodes(db, "p1", 10, 1)
    });
    let alice = env.tenant("alice", &["--node-quota", "3"]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));

    let r = api.post("/sessions", a, specs(&[("p1", 2)]));
    assert_eq!(r.status, 201, "{}", r.text());
    let first = r.json()["session"]["id"].as_i64().unwrap();

    let r = api.post("/sessions", a, specs(&[("p1", 2)]));
    assert_eq!(
        (r.status, r.detail()),
        (
            403,
            "quota exceeded: requested nodes (2) + current allocation (2) = 4 > 3".into()
        )
    );
    let r = api.post("/sessions", a, specs(&[("p1", 1), ("p1", 1)]));
    assert_eq!(
        r.detail(),
        "quota exceeded: requested nodes (2) + current allocation (2) = 4 > 3"
    );
    // an admin requesting on alice's behalf is held to alice's quota
    let alice_id = env.tenant_id("alice");
    let r = api.post(
        "/sessions",
        env.admin(),
        json!({"tenant_id": alice_id, "nodes_specs": [{"pool": "p1", "quantity": 5}]}),
    );
    assert_eq!(
        (r.status, r.detail()),
        (
            403,
            "quota exceeded: requested nodes (5) + current allocation (2) = 7 > 3".into()
        )
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sessions"),
        1,
        "nothing written on 403"
    );

    // retired sessions do not count (upstream bug fixed)
    let r = api.put(&format!("/sessions/{first}"), a, json!({"active": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.post("/sessions", a, specs(&[("p1", 3)]));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api.post("/sessions", a, specs(&[("p1", 1)]));
    assert_eq!(
        r.detail(),
        "quota exceeded: requested nodes (1) + current allocation (3) = 4 > 3"
    );
    // admins have no quota
    let r = api.post("/sessions", env.admin(), specs(&[("p1", 5)]));
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn session_create_tenant_id_rules() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    env.tenant("bob", &[]);
    env.tenant("carol", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let (alice_id, bob_id, carol_id) = (
        env.tenant_id("alice"),
        env.tenant_id("bob"),
        env.tenant_id("carol"),
    );

    // a non-admin cannot request for another tenant, but may name itself
    for id in [json!(bob_id), json!(99999), json!(99_999_999_999i64)] {
        let r = api.post(
            "/sessions",
            a,
            json!({"tenant_id": id, "nodes_specs": [{"pool": "p1", "quantity": 1}]}),
        );
        assert_eq!(
            (r.status, r.detail()),
            (403, "can't create session for other tenant".into()),
            "{id}"
        );
    }
    let r = api.post(
        "/sessions",
        a,
        json!({"tenant_id": alice_id, "nodes_specs": [{"pool": "p1", "quantity": 1}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["session"]["tenant"]["name"], "alice");

    // admin: unknown → 422, retired → 422, else the session belongs to the target
    let r = api.post(
        "/sessions",
        env.admin(),
        json!({"tenant_id": 99999, "nodes_specs": []}),
    );
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't find tenant with id 99999".into())
    );
    let r = api.post(
        "/sessions",
        env.admin(),
        json!({"tenant_id": 99_999_999_999i64, "nodes_specs": []}),
    );
    assert_eq!(
        (r.status, r.detail()),
        (422, "can't find tenant with id 99999999999".into())
    );
    let r = api.put(
        &format!("/tenants/{carol_id}"),
        env.admin(),
        json!({"active": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.post(
        "/sessions",
        env.admin(),
        json!({"tenant_id": carol_id, "nodes_specs": []}),
    );
    assert_eq!(
        (r.status, r.detail()),
        (422, "tenant 'carol' isn't active".into())
    );
    let r = api.post(
        "/sessions",
        env.admin(),
        json!({"tenant_id": bob_id, "nodes_specs": [{"pool": "p2", "quantity": 1}]}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["session"]["tenant"]["name"], "bob");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM sessions WHERE tenant_id = {bob_id}"
        )),
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 2);
}

// ---------------------------------------------------------------------------------------------
// Sessions: read

#[test]
fn session_get_anonymous_own_admin_404_422() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &[]);
    let api = env.api();
    let (a, b) = (Some(("alice", alice.as_str())), Some(("bob", bob.as_str())));

    let sa = api.post("/sessions", a, specs(&[("p1", 1)])).json()["session"]["id"]
        .as_i64()
        .unwrap();
    let sb = api.post("/sessions", b, specs(&[("p2", 1)])).json()["session"]["id"]
        .as_i64()
        .unwrap();
    let sr = api.post("/sessions", a, specs(&[("p1", 1)])).json()["session"]["id"]
        .as_i64()
        .unwrap();
    assert_eq!(
        api.put(&format!("/sessions/{sr}"), a, json!({"active": false}))
            .status,
        200
    );

    let ids = |r: Resp| -> Vec<i64> {
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(keys(&v), ["action", "sessions"]);
        assert_eq!(v["action"], "get");
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                assert_eq!(keys(s), SESSION_KEYS);
                s["id"].as_i64().unwrap()
            })
            .collect()
    };
    // anonymous: every tenant's active sessions (the legacy /Inventory relies on it)
    assert_eq!(ids(api.get("/sessions", None)), [sa, sb]);
    // a non-Basic scheme is anonymous too
    assert_eq!(
        ids(api.with_authz("GET", "/sessions", "Bearer abc", None)),
        [sa, sb]
    );
    assert_eq!(ids(api.get("/sessions", a)), [sa]);
    assert_eq!(ids(api.get("/sessions", b)), [sb]);
    assert_eq!(ids(api.get("/sessions", env.admin())), [sa, sb]);
    // optional auth still rejects bad credentials
    let r = api.get(
        "/sessions",
        Some(("alice", "00000000-0000-4000-8000-000000000000")),
    );
    assert_eq!((r.status, r.detail()), (401, "Unauthorized".into()));

    // GET /sessions/{id}: owner or admin; retired sessions too
    let r = api.get(&format!("/sessions/{sa}"), a);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(keys(&v), ["action", "session"]);
    assert_eq!(v["session"]["nodes"][0]["state"], "deployed");
    let r = api.get(&format!("/sessions/{sr}"), a);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["session"]["active"], false);
    assert_eq!(r.json()["session"]["nodes"][0]["state"], Value::Null);
    assert_eq!(api.get(&format!("/sessions/{sb}"), env.admin()).status, 200);
    let r = api.get(&format!("/sessions/{sb}"), a);
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.get("/sessions/99999", a);
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    let r = api.get("/sessions/99999999999", a);
    assert_eq!(
        r.status, 404,
        "an id beyond the integer range names no session"
    );
    let items = api.get("/sessions/abc", a).validation();
    assert_eq!(items[0]["type"], "int_parsing");
    assert_eq!(items[0]["loc"], json!(["path", "id"]));
    let r = api.get(&format!("/sessions/{sa}"), None);
    assert_eq!((r.status, r.detail()), (401, "Not authenticated".into()));
}

// ---------------------------------------------------------------------------------------------
// Authentication (§4.2)

#[test]
fn auth_401_403_variants_and_headers() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    env.tenant("carol", &[]);
    let carol_key = {
        // retire carol (through the API), keeping her key
        let r = env.api().put(
            &format!("/tenants/{}", env.tenant_id("carol")),
            env.admin(),
            json!({"api_key": "reset"}),
        );
        let key = r.json()["tenant"]["api_key"].as_str().unwrap().to_string();
        let r = env.api().put(
            &format!("/tenants/{}", env.tenant_id("carol")),
            env.admin(),
            json!({"active": false}),
        );
        assert_eq!(r.status, 200);
        key
    };
    let api = env.api();
    let bad_body = json!({"nodes_specs": "not a list"});

    // endpoints that need a tenant; the body is invalid on purpose: auth comes first
    let required: [(&str, &str); 9] = [
        ("POST", "/sessions"),
        ("GET", "/sessions/1"),
        ("PUT", "/sessions/1"),
        ("POST", "/nodes"),
        ("GET", "/nodes/1"),
        ("GET", "/tenants"),
        ("POST", "/tenants"),
        ("GET", "/tenants/1"),
        ("PUT", "/tenants/1"),
    ];
    let challenge = Some(r#"Basic realm="duffy""#);
    for (m, p) in required {
        let body = (m != "GET").then_some(&bad_body);
        let r = api.req(m, p, None, body);
        assert_eq!(
            (r.status, r.detail()),
            (401, "Not authenticated".into()),
            "{m} {p}"
        );
        assert_eq!(r.header("www-authenticate"), challenge, "{m} {p}");
        for authz in ["Bearer abc", "Digest x=1", "Basic"] {
            let r = api.with_authz(m, p, authz, body);
            let want = if authz == "Basic" {
                "Invalid authentication credentials"
            } else {
                "Not authenticated"
            };
            assert_eq!(
                (r.status, r.detail()),
                (401, want.into()),
                "{m} {p} {authz}"
            );
            assert_eq!(r.header("www-authenticate"), challenge, "{m} {p} {authz}");
        }
        let no_colon = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice")
        );
        for authz in ["Basic !!!notbase64", no_colon.as_str(), "Basic /w=="] {
            let r = api.with_authz(m, p, authz, body);
            assert_eq!(
                (r.status, r.detail()),
                (401, "Invalid authentication credentials".into()),
                "{m} {p} {authz}"
            );
            assert_eq!(r.header("www-authenticate"), challenge, "{m} {p} {authz}");
        }
        // unknown tenant, wrong key, key in another case: 401 without a challenge (a wrong
        // key costs a bcrypt check: tried on a few endpoints only)
        let wrong_keys = [
            ("alice", "00000000-0000-4000-8000-000000000000"),
            ("alice", &alice.to_uppercase()),
            ("alice", ""),
        ];
        let unknown = [("mallory", alice.as_str()), ("Alice", alice.as_str())];
        let bcrypt_too = matches!(p, "/sessions" | "/tenants");
        for (u, k) in unknown
            .iter()
            .chain(wrong_keys.iter().filter(|_| bcrypt_too))
        {
            let (u, k) = (*u, *k);
            let r = api.req(m, p, Some((u, k)), body);
            assert_eq!(
                (r.status, r.detail()),
                (401, "Unauthorized".into()),
                "{m} {p} {u}"
            );
            assert_eq!(r.header("www-authenticate"), None, "{m} {p} {u}");
        }
        // a retired tenant with its right key
        let r = api.req(m, p, Some(("carol", &carol_key)), body);
        assert_eq!((r.status, r.detail()), (403, "Forbidden".into()), "{m} {p}");
        assert_eq!(r.header("www-authenticate"), None);
    }
    // the scheme name is case-insensitive
    let r = api.with_authz(
        "GET",
        "/tenants",
        &basic("alice", &alice).replace("Basic", "bAsIc"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // GET /sessions: anonymous allowed, bad or retired credentials are not
    assert_eq!(api.get("/sessions", None).status, 200);
    assert_eq!(
        api.with_authz("GET", "/sessions", "Basic !!!", None).status,
        401
    );
    assert_eq!(api.get("/sessions", Some(("mallory", "x"))).status, 401);
    assert_eq!(
        api.get("/sessions", Some(("carol", &carol_key))).status,
        403
    );
    // endpoints without auth ignore credentials
    assert_eq!(api.get("/pools", Some(("mallory", "x"))).status, 200);
    assert_eq!(api.get("/nodes", Some(("mallory", "x"))).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Sessions: retire / extend

#[test]
fn session_retire_put_404_403_422() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &[]);
    let api = env.api();
    let (a, b) = (Some(("alice", alice.as_str())), Some(("bob", bob.as_str())));

    let s1 = api.post("/sessions", a, specs(&[("p1", 2)])).json()["session"].clone();
    let id = s1["id"].as_i64().unwrap();
    let node_ids: Vec<i64> = s1["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();

    // not the owner
    let r = api.put(&format!("/sessions/{id}"), b, json!({"active": false}));
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.put(&format!("/sessions/{id}"), b, json!({"expires_at": "+1h"}));
    assert_eq!(r.status, 403);
    assert_eq!(
        time(&api.get(&format!("/sessions/{id}"), a).json()["session"]["expires_at"]),
        time(&s1["expires_at"])
    );
    // empty body and active: true on an active session: 200, no change
    for body in [
        json!({}),
        json!({"active": true}),
        json!({"active": null, "expires_at": null}),
    ] {
        let r = api.put(&format!("/sessions/{id}"), a, body.clone());
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let v = r.json();
        assert_eq!(keys(&v), ["action", "session"]);
        assert_eq!(v["action"], "put");
        assert_eq!(v["session"]["active"], true);
        assert_eq!(v["session"]["expires_at"], s1["expires_at"]);
    }

    // retire: state null in the response, nodes deprovisioning in the database
    let r = api.put(&format!("/sessions/{id}"), a, json!({"active": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &r.json()["session"];
    assert_eq!(keys(s), SESSION_KEYS);
    assert_eq!(s["active"], false);
    let retired = time(&s["retired_at"]);
    assert!(retired >= time(&s["created_at"]));
    assert_eq!(s["nodes"].as_array().unwrap().len(), 2);
    for n in s["nodes"].as_array().unwrap() {
        assert_eq!(keys(n), SESSION_NODE_KEYS);
        assert_eq!(n["state"], Value::Null);
    }
    let ids = node_ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        env.strings(&format!(
            "SELECT state::text FROM nodes WHERE id IN ({ids})"
        )),
        ["deprovisioning", "deprovisioning"]
    );
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {id} AND retired_at IS NOT NULL"
        )),
        1
    );
    assert!(api.get("/sessions", a).json()["sessions"]
        .as_array()
        .unwrap()
        .is_empty());

    // already retired: 422 for any change, even none
    for body in [
        json!({"active": false}),
        json!({"active": true}),
        json!({"expires_at": "+1h"}),
        json!({}),
    ] {
        let r = api.put(&format!("/sessions/{id}"), a, body.clone());
        assert_eq!(
            (r.status, r.detail()),
            (422, format!("session {id} is retired")),
            "{body}"
        );
    }
    let r = api.put(
        &format!("/sessions/{id}"),
        env.admin(),
        json!({"active": false}),
    );
    assert_eq!(r.status, 422);

    // absent: 404, also with expires_at (upstream: 500, bug 14)
    for body in [
        json!({"active": false}),
        json!({"expires_at": "+1h"}),
        json!({"expires_at": "2030-01-01T00:00:00"}),
        json!({}),
    ] {
        for who in [a, env.admin()] {
            let r = api.put("/sessions/99999", who, body.clone());
            assert_eq!(
                (r.status, r.text().as_str()),
                (404, r#"{"detail":"Not Found"}"#),
                "{body}"
            );
        }
    }
    assert_eq!(api.put("/sessions/99999999999", a, json!({})).status, 404);
    let items = api.put("/sessions/x1", a, json!({})).validation();
    assert_eq!(items[0]["loc"], json!(["path", "id"]));
    // body validation
    let items = api
        .put(&format!("/sessions/{id}"), a, json!({"active": "maybe"}))
        .validation();
    assert_eq!(
        (items[0]["type"].as_str(), &items[0]["loc"]),
        (Some("bool_parsing"), &json!(["body", "active"]))
    );
    let items = api
        .put(&format!("/sessions/{id}"), a, json!({"expires_at": "1h"}))
        .validation();
    assert_eq!(items[0]["loc"], json!(["body", "expires_at"]));
    api.put(&format!("/sessions/{id}"), a, json!([]))
        .validation();
    // a lax boolean retires too (Pydantic reads "false")
    let s2 = api.post("/sessions", b, specs(&[("p2", 1)])).json()["session"]["id"]
        .as_i64()
        .unwrap();
    let r = api.put(&format!("/sessions/{s2}"), b, json!({"active": "false"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session"]["active"], false);
}

#[test]
fn session_extend_relative_absolute_clamped() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let s = api.post("/sessions", a, specs(&[("p1", 1)])).json()["session"].clone();
    let id = s["id"].as_i64().unwrap();
    let path = format!("/sessions/{id}");
    let created = time(&s["created_at"]);
    let mut expires = time(&s["expires_at"]);
    let h = chrono::Duration::hours;
    let put = |who: Auth, v: Value| -> NaiveDateTime {
        let r = api.put(&path, who, json!({"expires_at": v}));
        assert_eq!(r.status, 200, "{v}: {}", r.text());
        let t = time(&r.json()["session"]["expires_at"]);
        assert_eq!(env.scalar(&format!("SELECT to_char(expires_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM sessions WHERE id = {id}")),
                   t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string());
        t
    };

    // relative: added to the current expires_at, not to now
    let t = put(a, json!("+1h"));
    assert_eq!(t, expires + h(1));
    expires = t;
    let t = put(a, json!("-20m30s"));
    assert_eq!(t, expires - chrono::Duration::seconds(20 * 60 + 30));
    let t = put(a, json!(" + 1H 10M "));
    assert_eq!(
        t,
        expires - chrono::Duration::seconds(30) + chrono::Duration::minutes(50)
    );
    // a non-admin is clamped to created_at + lifetime max (12h), and never before created_at
    assert_eq!(put(a, json!("+100h")), created + h(12));
    assert_eq!(put(a, json!("2000-01-01T00:00:00Z")), created);
    assert_eq!(put(a, json!("-1w")), created);
    assert_eq!(put(a, json!("2100-01-01T00:00:00")), created + h(12));
    // absolute: the offset is dropped, the wall clock taken as UTC (upstream, kept)
    let t = put(env.admin(), json!("2100-01-01T00:00:00+02:00"));
    assert_eq!(t.to_string(), "2100-01-01 00:00:00");
    assert_eq!(
        api.get(&path, a).json()["session"]["expires_at"],
        "2100-01-01T00:00:00Z"
    );
    assert_eq!(
        put(env.admin(), json!("2100-01-02t03:04:05.5-05:00")).to_string(),
        "2100-01-02 03:04:05.500"
    );
    // a Unix timestamp is absolute
    assert_eq!(
        put(env.admin(), json!(4102444800i64)).to_string(),
        "2100-01-01 00:00:00"
    );
    // admins are not clamped; a non-admin extending it then shortens it to the max (kept)
    let t = put(env.admin(), json!("+100h"));
    assert_eq!(t.to_string(), "2100-01-05 04:00:00");
    assert_eq!(put(a, json!("+1m")), created + h(12));
    // out of range: 422, nothing changed, the server keeps serving
    for v in [
        json!("+9999999999w"),
        json!("+999999w"),
        json!("-9999999999w"),
        json!(1e300),
        json!("9999-12-31T23:59:59Z"),
    ] {
        let r = api.put(&path, env.admin(), json!({"expires_at": v}));
        if v == json!("9999-12-31T23:59:59Z") {
            assert_eq!(r.status, 200, "{}", r.text());
            continue;
        }
        assert_eq!(r.status, 422, "{v}: {}", r.text());
    }
    let r = api.put(&path, env.admin(), json!({"expires_at": "+1d"}));
    assert_eq!(r.status, 422, "past 9999-12-31: {}", r.text());
    assert_eq!(
        api.get(&path, a).json()["session"]["expires_at"],
        "9999-12-31T23:59:59Z"
    );
    // invalid formats
    for v in [
        json!("1h"),
        json!("+1x"),
        json!("+30m2h"),
        json!("tomorrow"),
        json!(true),
        json!([]),
    ] {
        let items = api.put(&path, a, json!({"expires_at": v})).validation();
        assert_eq!(items[0]["loc"], json!(["body", "expires_at"]), "{v}");
    }
    // retire and extend at once (admin)
    let r = api.put(
        &path,
        env.admin(),
        json!({"active": false, "expires_at": "2040-01-01T00:00:00"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session"]["active"], false);
    assert_eq!(r.json()["session"]["expires_at"], "2040-01-01T00:00:00Z");
}

// ---------------------------------------------------------------------------------------------
// Nodes

#[test]
fn nodes_list_create_get() {
    let env = Env::new(&pools_yaml(&[("p1", 2)]), |db| {
        add_ready_nodes(db, "p1", 2, 1);
        db.exec("INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, retired_at) VALUES ('gone', '127.8.0.1', 'done', NULL, false, now())");
    });
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let gone = env.count("SELECT id FROM nodes WHERE hostname = 'gone'");

    // GET /nodes: no auth, all non-retired nodes
    let r = api.get("/nodes", None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(keys(&v), ["action", "nodes"]);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(keys(n), NODE_KEYS);
        assert_eq!(n["state"], "ready");
        assert_eq!(n["active"], true);
        assert_eq!(n["pool"], "p1");
    }

    // POST /nodes: admin only
    let body = json!({"hostname": "metal1.example.net", "ipaddr": "127.5.0.1", "comment": null,
                      "pool": null, "data": {"architecture": "x86_64"}});
    let r = api.post("/nodes", None, body.clone());
    assert_eq!(r.status, 401);
    let r = api.post("/nodes", a, body.clone());
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.post("/nodes", env.admin(), body.clone());
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(keys(&v), ["action", "node"]);
    assert_eq!(v["action"], "post");
    let n = &v["node"];
    assert_eq!(keys(n), NODE_KEYS);
    assert_eq!(
        (
            &n["hostname"],
            &n["ipaddr"],
            &n["state"],
            &n["reusable"],
            &n["pool"],
            &n["comment"],
            &n["data"],
            &n["retired_at"],
            &n["active"]
        ),
        (
            &json!("metal1.example.net"),
            &json!("127.5.0.1"),
            &json!("unused"),
            &json!(true),
            &Value::Null,
            &Value::Null,
            &json!({"architecture": "x86_64"}),
            &Value::Null,
            &json!(true)
        )
    );
    time(&n["created_at"]);
    let metal1 = n["id"].as_i64().unwrap();
    assert_eq!(
        env.scalar(&format!(
            "SELECT state || ' ' || reusable FROM nodes WHERE id = {metal1}"
        )),
        "unused true"
    );
    // defaults and normalisation: reusable as given, data {}, IPv6 in canonical text form
    let r = api.post(
        "/nodes",
        env.admin(),
        json!({"hostname": "vm6", "ipaddr": "0:0:0:0:0:0:0:1", "reusable": false, "comment": "v6"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let n = &r.json()["node"];
    assert_eq!(
        (&n["ipaddr"], &n["reusable"], &n["data"], &n["comment"]),
        (&json!("::1"), &json!(false), &json!({}), &json!("v6"))
    );

    // duplicates: 409 without SQL or other internals in the detail (bug 18)
    for dup in [
        json!({"hostname": "metal1.example.net", "ipaddr": "127.5.0.2"}),
        json!({"hostname": "metal2.example.net", "ipaddr": "127.5.0.1"}),
        json!({"hostname": "p1-0.example.net", "ipaddr": "127.5.0.3"}),
    ] {
        let r = api.post("/nodes", env.admin(), dup.clone());
        assert_eq!(r.status, 409, "{dup}: {}", r.text());
        let d = r.detail();
        for bad in [
            "INSERT",
            "SELECT",
            "parameters",
            "sqlalche",
            "psycopg",
            "duplicate key",
            "index",
            "$2b$",
        ] {
            assert!(!d.contains(bad), "409 detail leaks {bad:?}: {d}");
        }
    }
    // validation
    for (body, loc) in [
        (json!({"hostname": "h", "ipaddr": "999.1.1.1"}), "ipaddr"),
        (json!({"hostname": "h", "ipaddr": "not-an-ip"}), "ipaddr"),
        (json!({"hostname": "h", "ipaddr": 5}), "ipaddr"),
        (json!({"hostname": "h"}), "ipaddr"),
        (json!({"ipaddr": "127.5.0.9"}), "hostname"),
        (json!({"hostname": 7, "ipaddr": "127.5.0.9"}), "hostname"),
        (
            json!({"hostname": "h", "ipaddr": "127.5.0.9", "data": [1]}),
            "data",
        ),
        (
            json!({"hostname": "h", "ipaddr": "127.5.0.9", "reusable": "perhaps"}),
            "reusable",
        ),
        (
            json!({"hostname": "h", "ipaddr": "127.5.0.9", "reusable": null}),
            "reusable",
        ),
        (
            json!({"hostname": "h", "ipaddr": "127.5.0.9", "data": null}),
            "data",
        ),
    ] {
        let items = api.post("/nodes", env.admin(), body.clone()).validation();
        assert_eq!(items[0]["loc"], json!(["body", loc]), "{body}");
    }
    assert_eq!(
        env.count("SELECT count(*) FROM nodes"),
        5,
        "nothing written by failed requests"
    );

    // GET /nodes/{id}: any tenant, retired nodes too
    let r = api.get(&format!("/nodes/{metal1}"), None);
    assert_eq!((r.status, r.detail()), (401, "Not authenticated".into()));
    let r = api.get(&format!("/nodes/{metal1}"), a);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(keys(&v), ["action", "node"]);
    assert_eq!(keys(&v["node"]), NODE_KEYS);
    assert_eq!(v["node"]["hostname"], "metal1.example.net");
    let r = api.get(&format!("/nodes/{gone}"), env.admin());
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["node"]["active"], false);
    assert_eq!(r.json()["node"]["state"], "done");
    time(&r.json()["node"]["retired_at"]);
    let r = api.get("/nodes/99999", a);
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, r#"{"detail":"Not Found"}"#)
    );
    assert_eq!(api.get("/nodes/99999999999", a).status, 404);
    let items = api.get("/nodes/one", a).validation();
    assert_eq!(items[0]["loc"], json!(["path", "id"]));
    // the list now has the new nodes, not the retired one
    assert_eq!(
        api.get("/nodes", None).json()["nodes"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants

#[test]
fn tenants_list_show_create() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    env.tenant("carol", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let (admin_id, alice_id, carol_id) = (
        env.tenant_id("admin"),
        env.tenant_id("alice"),
        env.tenant_id("carol"),
    );
    assert_eq!(
        api.put(
            &format!("/tenants/{carol_id}"),
            env.admin(),
            json!({"active": false})
        )
        .status,
        200
    );

    // GET /tenants: admins see all (retired too), others themselves
    let r = api.get("/tenants", env.admin());
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(keys(&v), ["action", "tenants"]);
    let mut names: Vec<(String, bool)> = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(keys(t), TENANT_KEYS);
            assert_eq!(t["ssh_key"], MASK);
            (
                t["name"].as_str().unwrap().to_string(),
                t["active"].as_bool().unwrap(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("admin".into(), true),
            ("alice".into(), true),
            ("carol".into(), false)
        ]
    );
    let r = api.get("/tenants", a);
    let list = r.json()["tenants"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["id"], alice_id);

    // GET /tenants/{id}
    let r = api.get(&format!("/tenants/{alice_id}"), a);
    assert_eq!(r.status, 200);
    assert_eq!(keys(&r.json()), ["action", "tenant"]);
    assert_eq!(keys(&r.json()["tenant"]), TENANT_KEYS);
    let r = api.get(&format!("/tenants/{admin_id}"), a);
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.get(&format!("/tenants/{carol_id}"), env.admin());
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenant"]["active"], false);
    time(&r.json()["tenant"]["retired_at"]);
    assert_eq!(api.get("/tenants/99999", env.admin()).status, 404);
    assert_eq!(api.get("/tenants/99999", a).status, 404, "404 before 403");
    assert_eq!(api.get("/tenants/99999999999", a).status, 404);
    api.get("/tenants/me", a).validation();

    // POST /tenants: 201 with the key once and the full SSH key
    let body = json!({"name": "t4", "ssh_key": SSH_KEY, "is_admin": false, "node_quota": 5,
                      "session_lifetime": "1h30m", "session_lifetime_max": 7200});
    assert_eq!(api.post("/tenants", a, body.clone()).status, 403);
    assert_eq!(api.post("/tenants", None, body.clone()).status, 401);
    let r = api.post("/tenants", env.admin(), body.clone());
    assert_eq!(r.status, 201, "{}", r.text());
    let text = r.text();
    let v = r.json();
    assert_eq!(keys(&v), ["action", "tenant"]);
    assert_eq!(v["action"], "post");
    let t = &v["tenant"];
    let mut want_keys = TENANT_KEYS.to_vec();
    want_keys.push("api_key");
    assert_eq!(keys(t), want_keys);
    assert_eq!(
        (
            &t["retired_at"],
            &t["active"],
            &t["name"],
            &t["is_admin"],
            &t["ssh_key"],
            &t["node_quota"]
        ),
        (
            &Value::Null,
            &json!(true),
            &json!("t4"),
            &json!(false),
            &json!(SSH_KEY),
            &json!(5)
        )
    );
    assert!(
        text.contains(r#""session_lifetime":5400,"session_lifetime_max":7200,"#),
        "{text}"
    );
    assert!(text.contains(r#""effective_node_quota":5,"effective_session_lifetime":5400.0,"effective_session_lifetime_max":7200.0,"api_key":""#), "{text}");
    let key = t["api_key"].as_str().unwrap().to_string();
    let u = uuid::Uuid::parse_str(&key).unwrap();
    assert_eq!(
        (u.get_version_num(), u.hyphenated().to_string()),
        (4, key.clone())
    );
    let t4_id = t["id"].as_i64().unwrap();
    assert_eq!(t4_id, env.tenant_id("t4"));
    assert!(
        !env.scalar("SELECT api_key FROM tenants WHERE name = 't4'")
            .contains(&key),
        "stored hashed"
    );
    // the new key works at once
    let r = api.get("/tenants", Some(("t4", &key)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tenants"][0]["name"], "t4");
    // defaults: is_admin false, nulls
    let r = api.post(
        "/tenants",
        env.admin(),
        json!({"name": "t5", "ssh_key": SSH_KEY, "is_admin": null, "node_quota": null}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t = &r.json()["tenant"];
    assert_eq!(
        (
            &t["is_admin"],
            &t["node_quota"],
            &t["session_lifetime"],
            &t["effective_node_quota"]
        ),
        (&json!(false), &Value::Null, &Value::Null, &json!(10))
    );

    // duplicates, also of a retired tenant's name: 409 without SQL or hashes (bug 18)
    let n = env.count("SELECT count(*) FROM tenants");
    for name in ["t4", "carol", "admin"] {
        let r = api.post(
            "/tenants",
            env.admin(),
            json!({"name": name, "ssh_key": SSH_KEY}),
        );
        assert_eq!(r.status, 409, "{}", r.text());
        let d = r.detail();
        for bad in [
            "INSERT",
            "SELECT",
            "parameters",
            "$2b$",
            "api_key",
            "duplicate key",
            "tenants_name_key",
            "sqlalchemy",
        ] {
            assert!(!d.contains(bad), "409 detail leaks {bad:?}: {d}");
        }
        assert!(d.contains(name), "{d}");
    }
    // validation: 422, nothing written
    for body in [
        json!({"name": "t6"}),
        json!({"ssh_key": SSH_KEY}),
        json!({"name": "t6", "ssh_key": "not a key"}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "node_quota": 0}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "node_quota": -2}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "node_quota": 3_000_000_000i64}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "node_quota": "many"}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "session_lifetime": "-1h"}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "session_lifetime": "30m2h"}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "session_lifetime_max": 1e18}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "session_lifetime": "999999w"}),
        json!({"name": "t6", "ssh_key": SSH_KEY, "is_admin": "sometimes"}),
        json!({"name": "with space", "ssh_key": SSH_KEY}),
        json!({"name": "with:colon", "ssh_key": SSH_KEY}),
        json!({"name": "", "ssh_key": SSH_KEY}),
        json!({"name": 6, "ssh_key": SSH_KEY}),
    ] {
        let r = api.post("/tenants", env.admin(), body.clone());
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert!(r.json().get("detail").is_some());
    }
    assert_eq!(env.count("SELECT count(*) FROM tenants"), n);
}

#[test]
fn tenants_update_and_api_key_reset() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &[]);
    let api = env.api();
    let bob_id = env.tenant_id("bob");
    let path = format!("/tenants/{bob_id}");
    let put = |body: Value| -> Value {
        let r = api.put(&path, env.admin(), body.clone());
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let v = r.json();
        assert_eq!(keys(&v), ["action", "tenant"]);
        assert_eq!(v["action"], "put");
        let mut want = TENANT_KEYS.to_vec();
        want.push("api_key");
        assert_eq!(keys(&v["tenant"]), want);
        assert_eq!(v["tenant"]["ssh_key"], MASK);
        v["tenant"].clone()
    };

    let t = put(json!({"node_quota": 5}));
    assert_eq!(
        (&t["node_quota"], &t["effective_node_quota"], &t["api_key"]),
        (&json!(5), &json!(5), &json!(MASK))
    );
    let t = put(json!({"session_lifetime": "2h", "session_lifetime_max": 14400}));
    assert_eq!(
        (&t["session_lifetime"], &t["session_lifetime_max"]),
        (&json!(7200), &json!(14400))
    );
    assert_eq!(
        (
            &t["effective_session_lifetime"],
            &t["effective_session_lifetime_max"]
        ),
        (&json!(7200.0), &json!(14400.0))
    );
    // present with null: back to the defaults
    let t = put(json!({"node_quota": null, "session_lifetime": null}));
    assert_eq!(
        (
            &t["node_quota"],
            &t["effective_node_quota"],
            &t["session_lifetime"],
            &t["session_lifetime_max"]
        ),
        (&Value::Null, &json!(10), &Value::Null, &json!(14400))
    );
    // `active` next to an update key is ignored (kept, bug 20)
    let t = put(json!({"active": false, "node_quota": 2}));
    assert_eq!((&t["active"], &t["node_quota"]), (&json!(true), &json!(2)));
    let t = put(json!({"active": "not even a bool", "node_quota": 3}));
    assert_eq!((&t["active"], &t["node_quota"]), (&json!(true), &json!(3)));
    // ssh_key: replaced when a non-empty string, unchanged when null
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0hCwgOTU7cNlGw8ctHxs+r8I+AvanwUsZsTtKVvFIx other@ci";
    put(json!({"ssh_key": other}));
    assert_eq!(
        env.scalar(&format!("SELECT ssh_key FROM tenants WHERE id = {bob_id}")),
        other
    );
    put(json!({"ssh_key": null}));
    put(json!({"ssh_key": ""}));
    assert_eq!(
        env.scalar(&format!("SELECT ssh_key FROM tenants WHERE id = {bob_id}")),
        other
    );

    // api_key reset: the new key works, the old one is refused
    assert_eq!(api.get("/tenants", Some(("bob", &bob))).status, 200);
    let t = put(json!({"api_key": "reset"}));
    let new_key = t["api_key"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&new_key).unwrap().get_version_num(),
        4
    );
    assert_ne!(new_key, bob);
    let r = api.get("/tenants", Some(("bob", &new_key)));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api.get("/tenants", Some(("bob", &bob)));
    assert_eq!((r.status, r.detail()), (401, "Unauthorized".into()));
    // api_key set to a given UUID: masked in the response, usable
    let chosen = "3b5d5c37-8d49-4c6f-9f1b-0d7a3e3d9a11";
    let t = put(json!({"api_key": chosen}));
    assert_eq!(t["api_key"], MASK);
    assert_eq!(api.get("/tenants", Some(("bob", chosen))).status, 200);
    assert_eq!(api.get("/tenants", Some(("bob", &new_key))).status, 401);
    let items = api
        .put(&path, env.admin(), json!({"api_key": "letmein"}))
        .validation();
    assert_eq!(items[0]["loc"], json!(["body", "api_key"]));
    assert!(
        !items[0].to_string().contains("letmein"),
        "the key is not echoed back"
    );

    // invalid values: 422, nothing changed
    for body in [
        json!({"node_quota": 0}),
        json!({"node_quota": 3_000_000_000i64}),
        json!({"session_lifetime": "-2h"}),
        json!({"session_lifetime_max": 1e18}),
        json!({"ssh_key": "nonsense"}),
    ] {
        let r = api.put(&path, env.admin(), body.clone());
        assert_eq!(r.status, 422, "{body}: {}", r.text());
    }
    let t = api.get(&path, env.admin()).json()["tenant"].clone();
    assert_eq!(
        (&t["node_quota"], &t["session_lifetime_max"]),
        (&json!(3), &json!(14400))
    );

    // neither an update nor a retire body
    for body in [
        json!({}),
        json!({"colour": "blue"}),
        json!({"active": null}),
    ] {
        let items = api.put(&path, env.admin(), body.clone()).validation();
        let locs: Vec<&Value> = items.iter().map(|i| &i["loc"]).collect();
        assert!(
            locs.contains(&&json!(["body", "TenantUpdateModel"])),
            "{body}: {items:?}"
        );
        assert!(
            locs.contains(&&json!(["body", "TenantRetireModel", "active"])),
            "{body}: {items:?}"
        );
        let update = items
            .iter()
            .find(|i| i["loc"] == json!(["body", "TenantUpdateModel"]))
            .unwrap();
        assert_eq!(update["msg"], "Value error, one of ssh_key, api_key, node_quota, session_lifetime, session_lifetime_max is required");
    }
    // non-admins cannot update, not even themselves
    let r = api.put(
        &format!("/tenants/{}", env.tenant_id("alice")),
        Some(("alice", &alice)),
        json!({"node_quota": 50}),
    );
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
}

#[test]
fn tenants_retire_unretire_and_check_order() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let (admin_id, alice_id, bob_id) = (
        env.tenant_id("admin"),
        env.tenant_id("alice"),
        env.tenant_id("bob"),
    );
    let bob_path = format!("/tenants/{bob_id}");
    let sid = api
        .post("/sessions", Some(("bob", &bob)), specs(&[("p1", 1)]))
        .json()["session"]["id"]
        .as_i64()
        .unwrap();

    // a non-admin learns nothing (spec §12 bug 19, fixed): 403 before 404 and before 422
    let r = api.put("/tenants/99999", a, json!({"active": false}));
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.put("/tenants/99999", env.admin(), json!({"active": false}));
    assert_eq!((r.status, r.detail()), (404, "Not Found".into()));
    let r = api.put(&bob_path, a, json!({"active": false}));
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    // body validation comes first (FastAPI validates before the handler)
    api.put("/tenants/99999", a, json!({})).validation();

    // retire: api_key null, the tenant's sessions expire now, its key is refused with 403
    let r = api.put(&bob_path, env.admin(), json!({"active": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json()["tenant"].clone();
    let mut want = TENANT_KEYS.to_vec();
    want.push("api_key");
    assert_eq!(keys(&t), want);
    assert_eq!((&t["active"], &t["api_key"]), (&json!(false), &Value::Null));
    time(&t["retired_at"]);
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM sessions WHERE id = {sid} AND expires_at <= now() AT TIME ZONE 'utc'")),
        1
    );
    let r = api.get("/tenants", Some(("bob", &bob)));
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));

    // a retired tenant: anything but unretiring → 422 for an admin; a non-admin gets 403 and
    // never the retired tenant's name
    let retired = format!("tenant bob (id={bob_id}) is retired");
    for body in [
        json!({"active": false}),
        json!({"node_quota": 3}),
        json!({"api_key": "reset"}),
        json!({"active": true, "node_quota": 1}),
    ] {
        let r = api.put(&bob_path, env.admin(), body.clone());
        assert_eq!((r.status, r.detail()), (422, retired.clone()), "{body}");
        let r = api.put(&bob_path, a, body.clone());
        assert_eq!((r.status, r.detail()), (403, "Forbidden".into()), "{body}");
    }
    // unretire: non-admin 403, admin 200
    let r = api.put(&bob_path, a, json!({"active": true}));
    assert_eq!((r.status, r.detail()), (403, "Forbidden".into()));
    let r = api.put(&bob_path, env.admin(), json!({"active": true}));
    assert_eq!(r.status, 200, "{}", r.text());
    let t = &r.json()["tenant"];
    assert_eq!(
        (&t["active"], &t["retired_at"], &t["api_key"]),
        (&json!(true), &Value::Null, &Value::Null)
    );
    assert_eq!(api.get("/tenants", Some(("bob", &bob))).status, 200);
    // unretiring an active tenant is a no-op
    assert_eq!(
        api.put(&bob_path, env.admin(), json!({"active": true}))
            .status,
        200
    );
    // a non-admin cannot retire anyone, itself included; an admin can retire itself
    assert_eq!(
        api.put(&format!("/tenants/{alice_id}"), a, json!({"active": false}))
            .status,
        403
    );
    let r = api.put(
        &format!("/tenants/{admin_id}"),
        env.admin(),
        json!({"active": "no"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tenant"]["active"], false);
    assert_eq!(api.get("/tenants", env.admin()).status, 403);
    let items = api
        .put(&bob_path, a, json!({"active": "perhaps"}))
        .validation();
    assert!(
        items.iter().any(|i| i["loc"] == json!(["body", "active"])),
        "{items:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Routing, errors, OpenAPI

#[test]
fn routing_redirect_404_405_request_id_openapi() {
    let env = Env::new("", |_| {});
    let api = env.api();
    let p = env.srv.port;

    // trailing slash → 307 to the slash-less path (query kept), before any auth
    let r = send(p, "GET", "/api/v1/pools/", &[], b"");
    assert_eq!(
        (r.status, r.header("location")),
        (307, Some("/api/v1/pools"))
    );
    let r = send(p, "GET", "/api/v1/sessions/?x=1", &[], b"");
    assert_eq!(
        (r.status, r.header("location")),
        (307, Some("/api/v1/sessions?x=1"))
    );
    let r = send(p, "POST", "/api/v1/sessions/", &[], b"{}");
    assert_eq!(
        (r.status, r.header("location")),
        (307, Some("/api/v1/sessions"))
    );

    // unknown paths → 404 {"detail":"Not Found"}
    for path in [
        "/",
        "/nope",
        "/api/v1",
        "/api/v1/nope",
        "/api/v1/pools/a/b",
        "/api/v2/pools",
        "/api/v1/sessions/1/nodes",
    ] {
        let r = send(p, "GET", path, &[], b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, r#"{"detail":"Not Found"}"#),
            "{path}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // wrong method → 405 with the allowed ones
    for (m, path, allow) in [
        ("DELETE", "/api/v1/pools", "GET"),
        ("POST", "/api/v1/pools/p1", "GET"),
        ("PUT", "/api/v1/sessions", "GET, POST"),
        ("PATCH", "/api/v1/sessions/1", "GET, PUT"),
        ("DELETE", "/api/v1/nodes", "GET, POST"),
        ("PUT", "/api/v1/nodes/1", "GET"),
        ("DELETE", "/api/v1/tenants", "GET, POST"),
        ("DELETE", "/api/v1/tenants/1", "GET, PUT"),
    ] {
        let r = send(p, m, path, &[], b"");
        assert_eq!(
            (r.status, r.text().as_str()),
            (405, r#"{"detail":"Method Not Allowed"}"#),
            "{m} {path}"
        );
        assert_eq!(r.header("allow"), Some(allow), "{m} {path}");
    }
    // X-Request-Id (checked on every response by `send`) is new for each request
    let a = api.get("/pools", None);
    let b = api.get("/pools", None);
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    // keep-alive: two requests on one connection both answered
    let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
    s.write_all(b"GET /api/v1/pools HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");

    // the OpenAPI document lists every operation of §4.4
    let r = api.get("/openapi.json", None);
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let ops: [(&str, &str, &str); 13] = [
        ("/api/v1/pools", "get", "get_all_pools_api_v1_pools_get"),
        (
            "/api/v1/pools/{name}",
            "get",
            "get_pool_api_v1_pools__name__get",
        ),
        (
            "/api/v1/sessions",
            "get",
            "get_all_sessions_api_v1_sessions_get",
        ),
        (
            "/api/v1/sessions",
            "post",
            "create_session_api_v1_sessions_post",
        ),
        (
            "/api/v1/sessions/{id}",
            "get",
            "get_session_api_v1_sessions__id__get",
        ),
        (
            "/api/v1/sessions/{id}",
            "put",
            "update_session_api_v1_sessions__id__put",
        ),
        ("/api/v1/nodes", "get", "get_all_nodes_api_v1_nodes_get"),
        ("/api/v1/nodes", "post", "create_node_api_v1_nodes_post"),
        (
            "/api/v1/nodes/{id}",
            "get",
            "get_node_api_v1_nodes__id__get",
        ),
        (
            "/api/v1/tenants",
            "get",
            "get_all_tenants_api_v1_tenants_get",
        ),
        (
            "/api/v1/tenants",
            "post",
            "create_tenant_api_v1_tenants_post",
        ),
        (
            "/api/v1/tenants/{id}",
            "get",
            "get_tenant_api_v1_tenants__id__get",
        ),
        (
            "/api/v1/tenants/{id}",
            "put",
            "update_tenant_api_v1_tenants__id__put",
        ),
    ];
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            n += 1;
            let id = op["operationId"].as_str().unwrap();
            assert!(
                ops.contains(&(path.as_str(), method.as_str(), id)),
                "unexpected {method} {path} {id}"
            );
            let tag = path.split('/').nth(3).unwrap();
            assert_eq!(op["tags"], json!([tag]), "{id}");
            for status in op["responses"].as_object().unwrap().keys() {
                assert!(
                    ["200", "201", "401", "403", "404", "409", "422", "429", "503"]
                        .contains(&status.as_str()),
                    "{id} {status}"
                );
            }
        }
    }
    assert_eq!(n, ops.len());
    assert_eq!(
        doc["components"]["securitySchemes"]["HTTPBasic"],
        json!({"type": "http", "scheme": "basic"})
    );
    // every $ref resolves
    let text = r.text();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
    // also at /openapi.json, like FastAPI
    let r = send(p, "GET", "/openapi.json", &[], b"");
    assert_eq!(r.json(), doc);
}

// ---------------------------------------------------------------------------------------------
// Contextualization (the 503 of POST /sessions)

/// A stand-in for `ssh` (config `contextualize.ssh`): logs calls, stores installed keys per
/// address, fails the install for addresses listed in `fail-install` and the removal of an
/// installed key for addresses listed in `fail-remove`, holds installs while `hold-install`
/// exists. Nothing leaves the machine.
const FAKE_SSH: &str = r#"#!/bin/sh
d=$(dirname "$0")
for a; do host=$cmd; cmd=$a; done
ip=${host#root@}
echo "$ip $cmd" >> "$d/ssh.log"
case "$cmd" in
  cat*)
    while [ -e "$d/hold-install" ]; do sleep 0.05; done
    if grep -qx "$ip" "$d/fail-install" 2>/dev/null; then cat >/dev/null; echo "install refused" >&2; exit 255; fi
    cat >> "$d/keys-$ip"; touch "$d/added-$ip"; exit 0;;
  sed*)
    if [ -e "$d/added-$ip" ] && grep -qx "$ip" "$d/fail-remove" 2>/dev/null; then echo "removal refused" >&2; exit 255; fi
    rm -f "$d/added-$ip"; exit 0;;
esac
exit 0
"#;

#[test]
fn session_create_contextualization_201_and_503() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("ssh");
    std::fs::write(&ssh, FAKE_SSH).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = format!(
        "contextualize:\n  ssh: {}\n  timeout: 10s\n{}    ctx:\n      fill-level: 2\n      contextualize: ssh\n      mechanism: {{type: ansible, ansible: {{provision: {{playbook: provision.yml}}}}}}\n",
        ssh.display(),
        pools_yaml(&[("p1", 2)])
    );
    let env = Env::new(&yaml, |db| {
        add_ready_nodes(db, "ctx", 7, 4); // 127.4.0.1 … 127.4.0.7, ids 1 … 7
        add_ready_nodes(db, "p1", 2, 1);
    });
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let node = |ip: &str| -> (String, String) {
        let row = env.scalar(&format!(
            "SELECT state || '|' || data::text FROM nodes WHERE ipaddr = '{ip}'"
        ));
        let (state, data) = row.split_once('|').unwrap();
        (state.to_string(), data.to_string())
    };

    // success: the tenant's key is installed on every node before the 201
    let r = api.post("/sessions", a, specs(&[("ctx", 2)]));
    assert_eq!(r.status, 201, "{}", r.text());
    let s = r.json()["session"].clone();
    let ips: Vec<&str> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["ipaddr"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["127.4.0.1", "127.4.0.2"]);
    for ip in &ips {
        assert_eq!(node(ip).0, "deployed");
        let keys = std::fs::read_to_string(dir.path().join(format!("keys-{ip}"))).unwrap();
        assert_eq!(keys, format!("### DUFFY tenant credentials\n{SSH_KEY}\n"));
    }

    // one node refuses the key: 503 + Retry-After: 0; it is failed, the other one is ready
    // again (upstream leaves it deployed without a session), the session is gone
    std::fs::write(dir.path().join("fail-install"), "127.4.0.3\n").unwrap();
    let sessions_before = env.count("SELECT count(*) FROM sessions");
    let r = api.post("/sessions", a, specs(&[("ctx", 2)]));
    assert_eq!(
        (r.status, r.detail()),
        (503, "contextualization of nodes failed".into()),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("0"));
    let (state, data) = node("127.4.0.3");
    assert_eq!(state, "failed");
    let data: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["error"]["detail"], "contextualizing node failed");
    assert!(data["error"]["failed_at"].is_string());
    let (state, data) = node("127.4.0.4");
    assert_eq!(state, "ready");
    assert!(!data.contains("nodes_spec"), "{data}");
    assert!(
        !dir.path().join("added-127.4.0.4").exists(),
        "the key was taken off again"
    );
    assert_eq!(env.count("SELECT count(*) FROM sessions"), sessions_before);
    assert_eq!(
        env.count("SELECT count(*) FROM sessions_nodes sn JOIN nodes n ON n.id = sn.node_id WHERE n.ipaddr IN ('127.4.0.3', '127.4.0.4')"),
        0
    );

    // a key that cannot be taken off again: that node is failed too; a node of a pool
    // without contextualization in the same request goes back to ready
    std::fs::write(dir.path().join("fail-install"), "127.4.0.5\n").unwrap();
    std::fs::write(dir.path().join("fail-remove"), "127.4.0.4\n").unwrap();
    let r = api.post("/sessions", a, specs(&[("p1", 1), ("ctx", 2)]));
    assert_eq!(
        (r.status, r.detail()),
        (503, "contextualization of nodes failed".into()),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("0"));
    let (state, data) = node("127.4.0.4");
    assert_eq!(state, "failed");
    assert!(data.contains("decontextualizing node failed"), "{data}");
    assert_eq!(node("127.4.0.5").0, "failed");
    assert_eq!(env.states("p1"), ["ready", "ready"]);
    assert_eq!(env.count("SELECT count(*) FROM sessions"), sessions_before);
    assert_eq!(
        env.states("ctx"),
        ["deployed", "deployed", "failed", "failed", "failed", "ready", "ready"]
    );

    // and the pool still serves
    std::fs::remove_file(dir.path().join("fail-install")).unwrap();
    let r = api.post("/sessions", a, specs(&[("ctx", 2), ("p1", 1)]));
    assert_eq!(r.status, 201, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Secrets in node data (issue 12, item 5) and `app.anonymous-reads` (item 6)

/// Node data with secrets at several depths; none of the `S3CRET` values may leave the server.
const SECRET_DATA: &str = r#"{"architecture": "x86_64",
  "ipmi": {"address": "10.9.0.1", "user": "root", "password": "IPMI-S3CRET-1"},
  "provision": {"ec2_instance_id": "i-0abc", "private_key": "-----BEGIN KEY----- PROV-S3CRET-2",
                "public_key": "ssh-ed25519 AAAA visible"},
  "api_token": "TOK-S3CRET-3", "secrets": {"db": "NESTED-S3CRET-4"},
  "list": [{"Passwd": "LIST-S3CRET-5"}]}"#;

/// What the API shows of [`SECRET_DATA`]: secret-named keys removed at every depth.
fn public_secret_data() -> Value {
    json!({"architecture": "x86_64",
           "ipmi": {"address": "10.9.0.1", "user": "root"},
           "provision": {"ec2_instance_id": "i-0abc", "public_key": "ssh-ed25519 AAAA visible"},
           "list": [{}]})
}

#[track_caller]
fn assert_no_secret(r: &Resp, what: &str) {
    assert!(r.status < 300, "{what}: {} {}", r.status, r.text());
    let t = r.text();
    assert!(!t.contains("S3CRET"), "{what} leaks node data secrets: {t}");
}

#[test]
fn node_data_secrets_are_in_no_response() {
    let env = Env::new(&pools_yaml(&[("p1", 1)]), |db| {
        db.exec(&format!(
            "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data) VALUES \
             ('s1.example.net', '127.9.0.1', 'ready', 'p1', false, '{SECRET_DATA}')"
        ));
    });
    let alice = env.tenant("alice", &[]);
    let a = Some(("alice", alice.as_str()));
    let api = env.api();
    let id = env.count("SELECT id FROM nodes WHERE hostname = 's1.example.net'");

    for auth in [None, a, env.admin()] {
        let r = api.get("/nodes", auth);
        assert_no_secret(&r, "GET /nodes");
        assert_eq!(r.json()["nodes"][0]["data"], public_secret_data());
    }
    for auth in [a, env.admin()] {
        let r = api.get(&format!("/nodes/{id}"), auth);
        assert_no_secret(&r, "GET /nodes/ID");
        assert_eq!(r.json()["node"]["data"], public_secret_data());
    }

    // the node lent in a session: create, list (anonymous, owner, admin), show, extend
    let r = api.post("/sessions", a, specs(&[("p1", 1)]));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_no_secret(&r, "POST /sessions");
    let node = &r.json()["session"]["nodes"][0];
    assert_eq!(
        node["data"]["ipmi"],
        json!({"address": "10.9.0.1", "user": "root"})
    );
    let sid = r.json()["session"]["id"].as_i64().unwrap();
    for auth in [None, a, env.admin()] {
        let r = api.get("/sessions", auth);
        assert_no_secret(&r, "GET /sessions");
        assert_eq!(r.json()["sessions"][0]["nodes"][0]["id"], json!(id));
    }
    for auth in [a, env.admin()] {
        assert_no_secret(
            &api.get(&format!("/sessions/{sid}"), auth),
            "GET /sessions/ID",
        );
    }
    assert_no_secret(
        &api.put(&format!("/sessions/{sid}"), a, json!({"expires_at": "+1h"})),
        "PUT /sessions/ID",
    );

    // POST /nodes: stored as given, answered without the secrets
    let r = api.post(
        "/nodes",
        env.admin(),
        json!({"hostname": "s2.example.net", "ipaddr": "127.9.0.2",
               "data": {"bmc": {"password": "POSTED-S3CRET-6", "address": "10.9.0.2"}}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_no_secret(&r, "POST /nodes");
    assert_eq!(
        r.json()["node"]["data"],
        json!({"bmc": {"address": "10.9.0.2"}})
    );
    assert_eq!(
        env.scalar("SELECT data->'bmc'->>'password' FROM nodes WHERE hostname = 's2.example.net'"),
        "POSTED-S3CRET-6"
    );
    // the session retired: nodes shown without state, still without secrets
    assert_no_secret(
        &api.put(&format!("/sessions/{sid}"), a, json!({"active": false})),
        "PUT /sessions/ID (retire)",
    );
    assert_no_secret(
        &api.get(&format!("/sessions/{sid}"), env.admin()),
        "GET /sessions/ID",
    );
}

#[test]
fn anonymous_reads_can_be_refused() {
    let env = Env::new(
        &format!(
            "app: {{anonymous-reads: false}}\n{}",
            pools_yaml(&[("p1", 1)])
        ),
        |db| add_ready_nodes(db, "p1", 1, 1),
    );
    let alice = env.tenant("alice", &[]);
    let a = Some(("alice", alice.as_str()));
    let api = env.api();
    let r = api.post("/sessions", a, specs(&[("p1", 1)]));
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["session"]["id"].as_i64().unwrap();
    let nid = env.count("SELECT min(id) FROM nodes");
    let reads = [
        "/pools".to_string(),
        "/pools/p1".to_string(),
        "/nodes".to_string(),
        format!("/nodes/{nid}"),
        "/sessions".to_string(),
        format!("/sessions/{sid}"),
        "/tenants".to_string(),
    ];
    for path in &reads {
        // anonymous: upstream's answer of a required-auth endpoint
        let r = api.get(path, None);
        assert_eq!(
            (r.status, r.text().as_str()),
            (401, r#"{"detail":"Not authenticated"}"#),
            "GET {path}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Basic realm="duffy""#),
            "{path}"
        );
        // with credentials: as before
        assert_eq!(api.get(path, a).status, 200, "GET {path} as alice");
        // bad credentials are still told apart
        let r = api.get(
            path,
            Some(("alice", "00000000-0000-4000-8000-000000000000")),
        );
        assert_eq!(
            (r.status, r.detail()),
            (401, "Unauthorized".into()),
            "{path}"
        );
    }
    // a tenant sees its own sessions only, as with anonymous reads on
    let r = api.get("/sessions", a);
    assert_eq!(r.json()["sessions"].as_array().unwrap().len(), 1);
    // the API's documents stay public
    let r = send(env.srv.port, "GET", "/openapi.json", &[], b"");
    assert_eq!(r.status, 200);

    // default (no setting): anonymous reads answered, as upstream does
    let open = Env::new(&pools_yaml(&[("p1", 1)]), |_| {});
    for path in ["/pools", "/pools/p1", "/nodes", "/sessions"] {
        assert_eq!(open.api().get(path, None).status, 200, "GET {path}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hardening (issue 12: outside security review)

/// A `Location` a browser resolves to this server: a path, not `//host…` or `/\host…` (the
/// WHATWG URL parser reads `\` as `/`).
fn stays_on_this_server(location: &str) -> bool {
    location.starts_with('/') && !matches!(location.as_bytes().get(1), Some(b'/' | b'\\'))
}

#[test]
fn trailing_slash_redirect_never_names_another_host() {
    let env = Env::new("", |_| {});
    let p = env.srv.port;
    // a path that a browser would read as another host: 404, like any unknown path
    for path in [
        "//evil.example/",
        "//evil.example//",
        "///evil.example/",
        "//evil.example/x/?a=1",
        "/\\evil.example/",
        "/\\/evil.example/",
        "//api/v1/pools/",
    ] {
        let r = send(p, "GET", path, &[], b"");
        assert_eq!(
            (r.status, r.header("location"), r.text().as_str()),
            (404, None, r#"{"detail":"Not Found"}"#),
            "GET {path}"
        );
    }
    // percent-encoded slashes stay encoded: a path of this server
    for path in ["/%2F%2Fevil.example/", "/%5Cevil.example/"] {
        let r = send(p, "GET", path, &[], b"");
        if let Some(l) = r.header("location") {
            assert!(stays_on_this_server(l), "GET {path}: Location {l}");
        }
    }
    // the redirect of a real path is unchanged
    let r = send(p, "GET", "/api/v1/pools/", &[], b"");
    assert_eq!(
        (r.status, r.header("location")),
        (307, Some("/api/v1/pools"))
    );
}

/// `"a\u0000b"` (and friends) in every input that reaches PostgreSQL: a 4xx in upstream's error
/// shape, never a 500; nothing written; and an internal error that does happen is logged with
/// its cause (SQLSTATE and message).
#[test]
fn nul_characters_are_rejected_and_internal_errors_log_their_cause() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let alice_id = env.tenant_id("alice");
    let nul = "a\u{0}b";
    let nul_item = |r: &Resp, loc: Value| {
        let items = r.validation();
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0]["loc"], loc, "{}", r.text());
        assert_eq!(items[0]["type"], "value_error", "{}", r.text());
        assert_eq!(
            items[0]["msg"],
            "Value error, must not contain the NUL character (\\u0000)",
            "{}",
            r.text()
        );
    };

    // request bodies: the string's place is named
    let r = api.post(
        "/sessions",
        a,
        json!({"nodes_specs": [{"pool": nul, "quantity": 1}]}),
    );
    nul_item(&r, json!(["body", "nodes_specs", 0, "pool"]));
    let r = api.post(
        "/tenants",
        env.admin(),
        json!({"name": nul, "ssh_key": SSH_KEY}),
    );
    nul_item(&r, json!(["body", "name"]));
    let r = api.put(
        &format!("/tenants/{alice_id}"),
        env.admin(),
        json!({"ssh_key": format!("{SSH_KEY}\u{0}")}),
    );
    nul_item(&r, json!(["body", "ssh_key"]));
    let r = api.post(
        "/nodes",
        env.admin(),
        json!({"hostname": nul, "ipaddr": "192.0.2.1"}),
    );
    nul_item(&r, json!(["body", "hostname"]));
    let r = api.post(
        "/nodes",
        env.admin(),
        json!({"hostname": "n", "ipaddr": "192.0.2.1", "data": {nul: 1}}),
    );
    nul_item(&r, json!(["body", "data", nul]));
    let r = api.put("/sessions/1", a, json!({"expires_at": "+1h\u{0}"}));
    assert_eq!(r.status, 422, "{}", r.text());

    // HTTP Basic user name or key: malformed credentials
    for (user, key) in [(nul, alice.as_str()), ("alice", "k\u{0}")] {
        let r = api.with_authz("GET", "/tenants", &basic(user, key), None);
        assert_eq!(
            (r.status, r.detail().as_str()),
            (401, "Invalid authentication credentials"),
            "{user:?}"
        );
    }

    // path parameters
    for (path, status) in [
        ("/pools/a%00b", 404),
        ("/sessions/1%00", 422),
        ("/nodes/%00", 422),
        ("/tenants/1%00", 422),
    ] {
        assert_eq!(api.get(path, env.admin()).status, status, "{path}");
    }

    // nothing written, no internal error
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 0);
    assert_eq!(env.count("SELECT count(*) FROM tenants"), 2);
    assert_eq!(env.count("SELECT count(*) FROM nodes"), 5);
    assert_eq!(
        env.scalar(&format!(
            "SELECT ssh_key FROM tenants WHERE id = {alice_id}"
        )),
        SSH_KEY
    );
    let log = env.srv.log();
    assert!(!log.contains("internal error"), "{log}");

    // a real database failure: 500 to the client, the cause in the log (not "db error" alone)
    env.db.exec(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'duffy test trigger refuses' USING ERRCODE = 'P0001', \
         DETAIL = 'row detail not for logs'; END $$; \
         CREATE TRIGGER boom BEFORE INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION boom();",
    );
    let r = api.post("/sessions", a, specs(&[("p1", 1)]));
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "Internal Server Error")
    );
    let log = env.srv.log();
    let line = log
        .lines()
        .find(|l| l.contains("internal error"))
        .unwrap_or_else(|| panic!("no internal error logged:\n{log}"));
    assert!(line.contains("duffy test trigger refuses"), "{line}");
    assert!(line.contains("(SQLSTATE P0001)"), "{line}");
    assert!(!line.contains("row detail not for logs"), "{line}");
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 0);
}

/// Only JSON bodies are parsed (FastAPI): any other `Content-Type` — the ones a browser sends
/// cross-site without a preflight, none at all, look-alikes — is FastAPI's 422 for a body that
/// is not an object, and nothing is written.
#[test]
fn request_bodies_must_be_declared_json() {
    let env = Env::with_pools();
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let alice_id = env.tenant_id("alice");
    let p = env.srv.port;
    let session = serde_json::to_string(&specs(&[("p1", 1)])).unwrap();
    let tenant = serde_json::to_string(&json!({"name": "mallory", "ssh_key": SSH_KEY})).unwrap();
    let node = r#"{"hostname": "n9", "ipaddr": "192.0.2.9"}"#.to_string();
    let retire = r#"{"active": false}"#.to_string();
    let quota = r#"{"node_quota": 1}"#.to_string();
    let admin = basic("admin", &env.admin_key);
    let endpoints: [(&str, String, &String); 5] = [
        ("POST", "/api/v1/sessions".into(), &session),
        ("POST", "/api/v1/tenants".into(), &tenant),
        ("POST", "/api/v1/nodes".into(), &node),
        ("PUT", format!("/api/v1/tenants/{alice_id}"), &quota),
        ("PUT", "/api/v1/sessions/1".into(), &retire),
    ];
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("text/json"),
        Some("application/jsonx"),
        Some("application/x-json"),
        Some("json"),
        None,
    ] {
        for (m, path, body) in &endpoints {
            let mut h = vec![("Authorization", admin.clone())];
            if let Some(ct) = ct {
                h.push(("Content-Type", ct.to_string()));
            }
            let r = send(p, m, path, &h, body.as_bytes());
            assert_eq!(
                r.json(),
                json!({"detail": [{
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": body,
                }]}),
                "{m} {path} Content-Type {ct:?}"
            );
            assert_eq!(r.status, 422);
        }
    }
    // authentication is still checked first; an empty body is still "missing"
    let r = send(
        p,
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "text/plain".into())],
        session.as_bytes(),
    );
    assert_eq!((r.status, r.detail().as_str()), (401, "Not authenticated"));
    let r = send(
        p,
        "POST",
        "/api/v1/sessions",
        &[
            ("Authorization", admin.clone()),
            ("Content-Type", "text/plain".into()),
        ],
        b"",
    );
    assert_eq!(r.validation()[0]["type"], "missing");
    // nothing was written
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 0);
    assert_eq!(env.count("SELECT count(*) FROM tenants"), 2);
    assert_eq!(env.count("SELECT count(*) FROM nodes"), 5);
    assert_eq!(
        env.scalar(&format!(
            "SELECT coalesce(node_quota::text, 'NULL') FROM tenants WHERE id = {alice_id}"
        )),
        "NULL"
    );

    // JSON as upstream reads it: any case, parameters, `application/*+json`
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;",
        "application/merge-patch+json",
        "application/vnd.duffy+json; charset=utf-8",
    ] {
        let r = send(
            p,
            "POST",
            "/api/v1/sessions",
            &[
                ("Authorization", basic("alice", &alice)),
                ("Content-Type", ct.into()),
            ],
            br#"{"nodes_specs": []}"#,
        );
        assert_eq!(r.status, 201, "{ct}: {}", r.text());
    }
    assert_eq!(
        api.get("/sessions", None).json()["sessions"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

/// Issue 12: a tenant retires a session it sees in `GET /sessions` while its nodes are being
/// contextualized. The nodes must not end `deployed` under a retired session (nothing would
/// ever tear them down), nor `failed` with the tenant's key on them, and the create answers
/// 4xx, not 500: the retirement takes the contextualizing nodes to `deprovisioning` (the
/// scheduler removes the keys and tears them down) and the create, finding its session retired
/// under its row lock, deploys nothing.
#[test]
fn retiring_a_session_during_contextualization_leaks_no_node() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("ssh");
    std::fs::write(&ssh, FAKE_SSH).unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let yaml = format!(
        "contextualize:\n  ssh: {}\n  timeout: 30s\n{}    ctx:\n      fill-level: 2\n      contextualize: ssh\n      mechanism: {{type: ansible, ansible: {{provision: {{playbook: provision.yml}}}}}}\n",
        ssh.display(),
        pools_yaml(&[("p1", 2)])
    );
    let env = Env::new(&yaml, |db| add_ready_nodes(db, "ctx", 2, 4));
    let alice = env.tenant("alice", &[]);
    let api = env.api();
    let a = Some(("alice", alice.as_str()));
    let hold = dir.path().join("hold-install");
    std::fs::write(&hold, "").unwrap();
    let port = api.port;
    let key = alice.clone();
    let create = std::thread::spawn(move || {
        Api { port }.post(
            "/sessions",
            Some(("alice", key.as_str())),
            specs(&[("ctx", 2)]),
        )
    });
    // the tenant sees its session while the keys are being installed, and retires it
    let start = std::time::Instant::now();
    let id = loop {
        let r = api.get("/sessions", a);
        if let Some(s) = r.json()["sessions"]
            .as_array()
            .and_then(|v| v.first().cloned())
        {
            break s["id"].as_i64().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no session appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        env.count("SELECT count(*) FROM nodes WHERE state = 'contextualizing'"),
        2
    );
    let r = api.put(&format!("/sessions/{id}"), a, json!({"active": false}));
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::remove_file(&hold).unwrap();
    let r = create.join().unwrap();
    assert_eq!(
        (r.status, r.detail()),
        (
            422,
            format!("session {id} was retired while its nodes were being contextualized")
        ),
        "{}",
        r.text()
    );
    assert_eq!(
        env.scalar("SELECT string_agg(state::text, ',' ORDER BY id) FROM nodes"),
        "deprovisioning,deprovisioning",
        "the nodes go to the scheduler's teardown (which removes the tenant's key)"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sessions WHERE retired_at IS NOT NULL"),
        1
    );
}

/// Issue 12: a fault between commit and answer (the server killed once the session committed,
/// the answer lost): the committed session is whole, and the retry with its key gets it.
#[test]
fn a_crash_between_commit_and_answer_loses_nothing_and_the_retry_gets_that_session() {
    let mut env = Env::new(&pools_yaml(&[("p1", 4)]), |db| {
        add_ready_nodes(db, "p1", 4, 6)
    });
    let alice = env.tenant("alice", &[]);
    let body = serde_json::to_vec(&specs(&[("p1", 2)])).unwrap();
    let request = |port: u16| {
        let mut req = format!(
            "POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Authorization: {}\r\nContent-Type: application/json\r\n\
             Idempotency-Key: ci-job-42\r\nContent-Length: {}\r\n\r\n",
            basic("alice", &alice),
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req
    };
    // The client's answer is lost: the server is SIGKILLed the moment its answer is readable,
    // that is after the session's transaction committed and before the client read a byte.
    let mut s = TcpStream::connect(("127.0.0.1", env.srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request(env.srv.port)).unwrap();
    let mut first = [0u8; 1];
    assert_eq!(s.peek(&mut first).expect("an answer starts"), 1);
    env.srv.child.kill().unwrap();
    env.srv.child.wait().unwrap();
    drop(s);
    // what committed is whole: one session, its two nodes deployed, nothing half-written
    assert_eq!(
        env.count("SELECT count(*) FROM sessions WHERE retired_at IS NULL"),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM sessions_nodes sn JOIN nodes n ON n.id = sn.node_id WHERE n.state = 'deployed'"),
        2
    );
    assert_eq!(env.states("p1"), ["deployed", "deployed", "ready", "ready"]);
    // a new server; the client retries with the same key and gets that session, not a second
    env.srv = Server::start(&env.cfg.path);
    let port = env.srv.port;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(&request(port)).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 201 "), "{raw}\n{}", env.srv.log());
    let retried: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
    let committed = env.scalar("SELECT id FROM sessions WHERE retired_at IS NULL");
    assert_eq!(retried["session"]["id"].to_string(), committed);
    assert_eq!(retried["session"]["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 1);
    assert_eq!(env.states("p1"), ["deployed", "deployed", "ready", "ready"]);
}

/// Issue 12: `Idempotency-Key` on `POST /sessions`: a client that lost the answer (a restart,
/// a killed server) retries with the same key and gets the session its first request made,
/// never a second one; keys are per tenant; a bad key is a 422 naming the header.
#[test]
fn idempotency_key_makes_a_retried_create_answer_the_first_session() {
    let env = Env::new(&pools_yaml(&[("p1", 4)]), |db| {
        add_ready_nodes(db, "p1", 4, 5)
    });
    let alice = env.tenant("alice", &[]);
    let bob = env.tenant("bob", &[]);
    let api = env.api();
    let post = |who: (&str, &str), key: &str| {
        let body = serde_json::to_vec(&specs(&[("p1", 1)])).unwrap();
        send(
            api.port,
            "POST",
            "/api/v1/sessions",
            &[
                ("Authorization", basic(who.0, who.1)),
                ("Content-Type", "application/json".to_string()),
                ("Idempotency-Key", key.to_string()),
            ],
            &body,
        )
    };
    let a = ("alice", alice.as_str());
    let first = post(a, "job-1234-attempt");
    assert_eq!(first.status, 201, "{}\n{}", first.text(), env.srv.log());
    let id = first.json()["session"]["id"].clone();
    let again = post(a, "job-1234-attempt");
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.json()["session"]["id"], id);
    assert_eq!(
        again.json()["session"]["nodes"],
        first.json()["session"]["nodes"]
    );
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM nodes WHERE state = 'deployed'"),
        1
    );
    // another key, or another tenant with the same key: new sessions
    let other = post(a, "job-5678");
    assert_eq!(other.status, 201);
    assert_ne!(other.json()["session"]["id"], id);
    let b = post(("bob", bob.as_str()), "job-1234-attempt");
    assert_eq!(b.status, 201);
    assert_ne!(b.json()["session"]["id"], id);
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 3);
    // without a key, as upstream
    assert_eq!(
        api.post("/sessions", Some(a), specs(&[("p1", 1)])).status,
        201
    );
    // bad keys: 422 naming the header, nothing allocated
    for bad in ["x".repeat(256), "tab\there".to_string()] {
        let r = post(a, &bad);
        assert_eq!(
            (r.status, r.detail()),
            (
                422,
                "Idempotency-Key: expected 1 to 255 printable ASCII characters".into()
            ),
            "{bad:?}"
        );
    }
    assert_eq!(env.count("SELECT count(*) FROM sessions"), 4);
}

/// The peak resident memory of a process (VmHWM, kB).
fn peak_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Issue 12: anonymous `GET /api/v1/nodes` over 22 000 nodes by 8 callers at once held the
/// whole list, as JSON values and as bytes, per caller (server RSS 114 → 449 MB, never back
/// down). Now it streams in constant memory with a bounded number of heavy reads at once: the
/// answers are whole and identical, and the server's peak memory grows by a small fraction of
/// that.
#[test]
fn listing_every_node_streams_in_bounded_memory() {
    let env = Env::new(&pools_yaml(&[("big", 1)]), |db| {
        db.exec(
            "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data)
             SELECT 'n' || i || '.big.example', '10.' || (i / 65536) || '.' || (i / 256 % 256)
                    || '.' || (i % 256), 'ready', 'big', false,
                    ('{\"architecture\": \"x86_64\", \"provision\": {\"instance\": \"i-' || i || '\"}}')::json
             FROM generate_series(1, 22000) i",
        )
    });
    let api = env.api();
    let pid = env.srv.child.id();
    // warm up (code paths, connections), then measure the peak from here
    assert_eq!(api.get("/pools", None).status, 200);
    let before = peak_rss_kb(pid);
    let port = api.port;
    let callers: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || Api { port }.get("/nodes", None)))
        .collect();
    let answers: Vec<Resp> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    let after = peak_rss_kb(pid);
    for r in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, answers[0].body, "every answer the same list");
    }
    let v = answers[0].json();
    assert_eq!(v["action"], "get");
    let list = v["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 22000);
    assert_eq!(list[21999]["hostname"], "n22000.big.example");
    let body_mb = answers[0].body.len() / (1 << 20);
    let grown_mb = after.saturating_sub(before) / 1024;
    eprintln!(
        "GET /nodes x8: {body_mb} MB each, server peak RSS {} -> {} MB",
        before / 1024,
        after / 1024
    );
    assert!(
        grown_mb < 40,
        "the server's peak memory grew by {grown_mb} MB for 8 lists of {body_mb} MB"
    );
}
