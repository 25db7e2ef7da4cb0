//! The legacy metaclient API for python-cicoclient (`cico`) — compat spec §5: `GET /Node/get`,
//! `/Node/done`, `/Node/fail`, `/Inventory` (+ `/openapi.json`, `/docs`), served by `duffy serve`
//! on a listener of its own when `metaclient` is configured, or alone by `duffy serve-legacy`.
//!
//! Upstream's metaclient is a separate FastAPI app that turns every call into a v1 request over
//! HTTP (`metaclient.dest`). duffy calls the library directly — `alloc::{create, update, list}`
//! and the v1 verified-key cache — with the same semantics: each call has the v1 outcome it
//! would have had (an [`ApiError`] through the same `SessionError → ApiError` mapping as v1), and
//! that outcome picks upstream's legacy body: v1 401/403 → 403 `{"msg":"Invalid duffy key"}`,
//! any other v1 failure → 200 with a JSON string such as `"Failed to allocate nodes"`.
//!
//! `metaclient.usermap` maps a legacy key to a tenant name; the tenant's API key must be that key
//! (upstream sends them as Basic auth). `metaclient.poolmap` maps `ver`/`arch`/`flavor` to a pool
//! with Jinja2 templates (minijinja, set up to behave like Jinja2's defaults: undefined renders
//! empty, `replace`/`default`/… and Python string methods work, no autoescape, `True`/`None`);
//! `metaclient.mangle_hostname` rewrites every hostname returned, alike in `/Node/get` and
//! `/Inventory` (cicoclient matches them by substring).
//!
//! Deliberate differences (upstream answers 500 in these cases): templates and selectors are
//! compiled when the server starts — an invalid one is a config error naming
//! `metaclient.poolmap[i].pool` — and a template that fails at render time is logged; the pool
//! is then "no match" (→ `"Failed to allocate nodes"`) and the hostname is left unmangled.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use minijinja::{Environment, ErrorKind};
use regex::Regex;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::auth;
use super::http::{json_response, validation_item, ApiError, Resp};
use super::AppState;
use crate::alloc::{self, Expiry, NodesSpec};
use crate::config::{Config, ConfigError, MetaclientConfig, RawConfig};
use crate::jinja::jinja2_env;
use crate::tenant::Tenant;

/// Upstream's legacy bodies.
pub const FAILED_ALLOCATE: &str = "Failed to allocate nodes";
pub const FAILED_RETURN: &str = "Failed to return nodes on completion";
pub const FAILED_EXTEND: &str = "Failed to change expiration time";
pub const FAILED_INVENTORY: &str = "Failed to retrieve inventory of nodes";
pub const PARAMS_ABSENT: &str = "Some parameters are absent";
pub const DONE: &str = "Done";

/// `/Node/fail` extends the session by this much (upstream sends `{"expires_at": "+6h"}`).
const FAIL_EXTENSION_MS: i64 = 6 * 3600 * 1000;

/// A poolmap selector: `^…$` is a regular expression matched from the start, else exact.
#[derive(Debug)]
enum Selector {
    Exact(String),
    Regex(Regex),
}

impl Selector {
    fn matches(&self, v: &str) -> bool {
        match self {
            Selector::Exact(s) => s == v,
            Selector::Regex(r) => r.find(v).is_some_and(|m| m.start() == 0),
        }
    }
}

#[derive(Debug)]
struct PoolRule {
    /// (`ver` | `arch` | `flavor`, selector)
    selectors: Vec<(&'static str, Selector)>,
    /// template name in the environment
    template: String,
}

/// The compiled `metaclient` section.
pub struct Legacy {
    usermap: HashMap<String, String>,
    poolmap: Vec<PoolRule>,
    env: Environment<'static>,
    mangle: bool,
}

impl std::fmt::Debug for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the usermap: its keys are API keys
        f.debug_struct("Legacy")
            .field("users", &self.usermap.len())
            .field("poolmap", &self.poolmap)
            .field("mangle", &self.mangle)
            .finish()
    }
}

const MANGLE: &str = "mangle_hostname";

/// Errors that a template shows whatever the request: unknown filters, tests, functions.
fn static_template_error(e: &minijinja::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
    )
}

fn ctx(pairs: &[(&str, &str)]) -> minijinja::Value {
    let m: BTreeMap<String, minijinja::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), minijinja::Value::from(*v)))
        .collect();
    minijinja::Value::from_object(m)
}

impl Legacy {
    /// Compile `cfg.metaclient`, if there is one.
    pub fn from_config(cfg: &Config) -> Result<Option<Legacy>, ConfigError> {
        match &cfg.metaclient {
            None => Ok(None),
            Some(m) => Legacy::new(m, &cfg.raw).map(Some),
        }
    }

    /// Compile the templates and selectors; errors name the key (`metaclient.poolmap[1].arch`).
    pub fn new(m: &MetaclientConfig, raw: &RawConfig) -> Result<Legacy, ConfigError> {
        let mut env = jinja2_env();
        let mut poolmap = Vec::with_capacity(m.poolmap.len());
        for (i, e) in m.poolmap.iter().enumerate() {
            let at = format!("metaclient.poolmap[{i}]");
            let mut selectors = Vec::new();
            for (name, v) in [("ver", &e.ver), ("arch", &e.arch), ("flavor", &e.flavor)] {
                // upstream: an empty selector is no selector (`if sel_value:`)
                let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                    continue;
                };
                let sel = if v.starts_with('^') && v.ends_with('$') {
                    Selector::Regex(Regex::new(v).map_err(|err| {
                        raw.invalid(
                            &format!("{at}.{name}"),
                            format!("invalid regular expression {v:?}: {}", one_line(&err)),
                        )
                    })?)
                } else {
                    Selector::Exact(v.to_string())
                };
                selectors.push((name, sel));
            }
            // upstream: an entry whose pool is empty never wins (`if pool_template:`)
            if e.pool.is_empty() {
                continue;
            }
            let name = format!("pool[{i}]");
            let key = format!("{at}.pool");
            env.add_template_owned(name.clone(), e.pool.clone())
                .map_err(|err| raw.invalid(&key, template_error(&e.pool, &err)))?;
            let sample = ctx(&[("ver", "7"), ("arch", "x86_64"), ("flavor", "small")]);
            if let Err(err) = env.get_template(&name).and_then(|t| t.render(sample)) {
                if static_template_error(&err) {
                    return Err(raw.invalid(&key, template_error(&e.pool, &err)));
                }
            }
            poolmap.push(PoolRule {
                selectors,
                template: name,
            });
        }
        let mut mangle = false;
        if let Some(t) = m.mangle_hostname.as_deref().filter(|t| !t.is_empty()) {
            let key = "metaclient.mangle_hostname";
            env.add_template_owned(MANGLE, t.to_string())
                .map_err(|err| raw.invalid(key, template_error(t, &err)))?;
            let sample = ctx(&[("hostname", "n1.example.com")]);
            if let Err(err) = env.get_template(MANGLE).and_then(|tp| tp.render(sample)) {
                if static_template_error(&err) {
                    return Err(raw.invalid(key, template_error(t, &err)));
                }
            }
            mangle = true;
        }
        Ok(Legacy {
            usermap: m.usermap.0.iter().cloned().collect(),
            poolmap,
            env,
            mangle,
        })
    }

    /// The pool for a request (first matching entry wins, its template rendered with the
    /// parameters present); `None`: no entry matches.
    pub fn lookup_pool(
        &self,
        ver: Option<&str>,
        arch: Option<&str>,
        flavor: Option<&str>,
    ) -> Result<Option<String>, minijinja::Error> {
        let params: Vec<(&str, &str)> = [("ver", ver), ("arch", arch), ("flavor", flavor)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        for rule in &self.poolmap {
            let matched = rule
                .selectors
                .iter()
                .all(|(k, sel)| get(k).is_some_and(|v| sel.matches(v)));
            if matched {
                let t = self.env.get_template(&rule.template)?;
                return t.render(ctx(&params)).map(Some);
            }
        }
        Ok(None)
    }

    /// A hostname as the metaclient returns it (JSON: `null` stays `null` without a template).
    pub fn mangle_hostname(&self, hostname: Option<&str>) -> Value {
        if !self.mangle {
            return json!(hostname);
        }
        let h = hostname.unwrap_or("");
        match self
            .env
            .get_template(MANGLE)
            .and_then(|t| t.render(ctx(&[("hostname", h)])))
        {
            Ok(s) => json!(s),
            Err(e) => {
                tracing::warn!(
                    "metaclient.mangle_hostname failed for {h:?}, hostname left as is: {}",
                    one_line(&e)
                );
                json!(hostname)
            }
        }
    }

    /// The tenant name for a legacy key.
    fn user(&self, key: &str) -> Option<&str> {
        self.usermap.get(key).map(String::as_str)
    }
}

fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn template_error(src: &str, e: &minijinja::Error) -> String {
    let mut msg = format!("invalid Jinja2 template {src:?}: {}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    msg
}

// ---------------------------------------------------------------------------------------------
// request parsing

/// Query parameters as Starlette reads them: `parse_qsl(keep_blank_values=True)` (`+` is a
/// space, bad `%` escapes kept, invalid UTF-8 replaced), the last of a repeated name wins.
fn query_params(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for part in q.unwrap_or("").split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        m.insert(unquote_plus(k), unquote_plus(v));
    }
    m
}

fn unquote_plus(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An integer as pydantic 2 parses a string in lax mode (query and path parameters): surrounding
/// whitespace, a sign, `_` between digits and a fraction of zeros (`"1.0"`) are accepted.
/// Values beyond `i64` saturate (every consumer rejects them anyway).
pub fn pydantic_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let int = match body.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.bytes().all(|c| c == b'0') => i,
        Some(_) => return None,
        None => body,
    };
    if int.is_empty()
        || int.starts_with('_')
        || int.ends_with('_')
        || int.contains("__")
        || !int.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    let v = int.bytes().filter(|c| *c != b'_').fold(0i64, |v, c| {
        v.saturating_mul(10).saturating_add(i64::from(c - b'0'))
    });
    Some(if neg { -v } else { v })
}

// ---------------------------------------------------------------------------------------------
// responses

fn text(s: &str) -> Resp {
    json_response(StatusCode::OK, &json!(s))
}

fn invalid_key() -> Resp {
    json_response(StatusCode::FORBIDDEN, &json!({"msg": "Invalid duffy key"}))
}

fn detail(status: StatusCode, d: &str) -> Resp {
    json_response(status, &json!({ "detail": d }))
}

/// The status the v1 API would have answered with.
fn v1_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Detail(s, _) => *s,
        ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn is_auth_failure(e: &ApiError) -> bool {
    matches!(
        v1_status(e),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    )
}

fn log_v1_failure(what: &str, e: &ApiError) {
    match e {
        ApiError::Internal(cause) => tracing::error!("{what}: internal error: {cause}"),
        ApiError::Detail(s, d) => tracing::info!("{what}: {} {d}", s.as_u16()),
        other => tracing::info!("{what}: {}", v1_status(other).as_u16()),
    }
}

// ---------------------------------------------------------------------------------------------
// handlers

/// Upstream's `req_credentials`: `key` → (tenant name, key); `None` when `key` is missing or
/// empty (403 "Not authenticated" on `/Node/*`, anonymous on `/Inventory` unless
/// `app.anonymous-reads` is false); a key not in the
/// usermap is an error (403 "Forbidden"). Errors are the 403's detail.
fn credentials<'a>(
    st: &AppState,
    lg: &'a Legacy,
    q: &'a HashMap<String, String>,
) -> Result<Option<(&'a str, &'a str)>, &'static str> {
    let key = q.get("key").map(String::as_str).unwrap_or("");
    if key.is_empty() {
        return Ok(None);
    }
    match lg.user(key) {
        Some(name) => Ok(Some((name, key))),
        None => {
            st.auth.failures.inc("wrong_key");
            Err("Forbidden")
        }
    }
}

/// [`credentials`], required.
fn required_credentials<'a>(
    st: &AppState,
    lg: &'a Legacy,
    q: &'a HashMap<String, String>,
) -> Result<(&'a str, &'a str), &'static str> {
    credentials(st, lg, q)?.ok_or("Not authenticated")
}

/// v1 authentication of the usermap pair (HTTP Basic `name:key` upstream).
async fn v1_auth(st: &AppState, name: &str, key: &str) -> Result<Tenant, ApiError> {
    auth::verify_pair(&st.db, &st.auth, &st.cfg.defaults, name, key).await
}

async fn node_get(st: &AppState, lg: &Legacy, q: &HashMap<String, String>) -> Resp {
    let (name, key) = match required_credentials(st, lg, q) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    let ver = q.get("ver").map(String::as_str).unwrap_or("7");
    let arch = q.get("arch").map(String::as_str).unwrap_or("x86_64");
    let flavor = q.get("flavor").map(String::as_str);
    let count = match q.get("count") {
        None => 1,
        Some(s) => match pydantic_int(s) {
            Some(n) => n,
            None => {
                return ApiError::Validation(vec![validation_item(
                    "int_parsing",
                    json!(["query", "count"]),
                    "Input should be a valid integer, unable to parse string as an integer",
                    json!(s),
                )])
                .into_response()
            }
        },
    };
    let pool = match lg.lookup_pool(Some(ver), Some(arch), flavor) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "metaclient.poolmap template failed for ver={ver:?} arch={arch:?} flavor={flavor:?}: {}",
                one_line(&e)
            );
            None
        }
    };
    // what `POST /api/v1/sessions {"nodes_specs": [{"quantity": count, "pool": pool}]}` does
    let result: Result<alloc::SessionView, ApiError> = async {
        let tenant = v1_auth(st, name, key).await?;
        let Some(pool) = pool else {
            return Err(ApiError::Validation(vec![validation_item(
                "string_type",
                json!(["body", "nodes_specs", 0, "pool"]),
                "Input should be a valid string",
                Value::Null,
            )]));
        };
        if count < 1 {
            return Err(ApiError::Validation(vec![validation_item(
                "greater_than_equal",
                json!(["body", "nodes_specs", 0, "quantity"]),
                "Input should be greater than or equal to 1",
                json!(count),
            )]));
        }
        // the body upstream's metaclient sends, checked as the v1 API checks it
        super::http::reject_nul(&json!({"nodes_specs": [{"quantity": count, "pool": pool}]}))?;
        // no pool holds more than i32::MAX nodes (ids are int4): a larger count fails alike,
        // and stays clear of i64 overflow in quota arithmetic
        let specs = [NodesSpec {
            pool,
            quantity: count.min(i64::from(i32::MAX)),
        }];
        let start = std::time::Instant::now();
        let s = alloc::create(&st.db, &st.cfg, &tenant, None, &specs).await;
        st.metrics.allocation("legacy", &s, start.elapsed());
        Ok(s?)
    }
    .await;
    match result {
        Ok(s) => json_response(
            StatusCode::OK,
            &json!({
                "ssid": s.row.id,
                "hosts": s.nodes.iter().map(|n| lg.mangle_hostname(n.hostname.as_deref())).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => {
            log_v1_failure(
                &format!("Node/get tenant={name} ver={ver:?} arch={arch:?} flavor={flavor:?} count={count}"),
                &e,
            );
            text(FAILED_ALLOCATE)
        }
    }
}

/// `/Node/done` (retire) and `/Node/fail` (extend by 6 hours).
async fn node_update(
    st: &AppState,
    lg: &Legacy,
    q: &HashMap<String, String>,
    retire: bool,
) -> Resp {
    let (name, key) = match required_credentials(st, lg, q) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    let Some(ssid) = q.get("ssid").filter(|s| !s.is_empty()) else {
        return text(PARAMS_ABSENT);
    };
    // what `PUT /api/v1/sessions/{ssid}` with `{"active": false}` / `{"expires_at": "+6h"}` does
    let result: Result<(), ApiError> = async {
        let tenant = v1_auth(st, name, key).await?;
        let id = pydantic_int(ssid)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::Validation(vec![validation_item(
                    "int_parsing",
                    json!(["path", "id"]),
                    "Input should be a valid integer, unable to parse string as an integer",
                    json!(ssid),
                )])
            })?;
        let (active, expires) = if retire {
            (Some(false), None)
        } else {
            (None, Some(Expiry::Relative(FAIL_EXTENSION_MS)))
        };
        alloc::update(&st.db, &st.cfg, &tenant, id, active, expires).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => text(DONE),
        Err(e) => {
            let what = if retire { "Node/done" } else { "Node/fail" };
            log_v1_failure(&format!("{what} tenant={name} ssid={ssid:?}"), &e);
            if is_auth_failure(&e) {
                invalid_key()
            } else if retire {
                text(FAILED_RETURN)
            } else {
                text(FAILED_EXTEND)
            }
        }
    }
}

async fn inventory(st: &AppState, lg: &Legacy, q: &HashMap<String, String>) -> Resp {
    let cred = match credentials(st, lg, q) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    match cred {
        Some((name, key)) => {
            // `GET /api/v1/sessions` as the tenant: its active sessions (all of them for admins)
            let result: Result<Vec<alloc::SessionView>, ApiError> = async {
                let tenant = v1_auth(st, name, key).await?;
                Ok(alloc::list(&st.db, &st.cfg, Some(&tenant)).await?)
            }
            .await;
            match result {
                Ok(sessions) => {
                    let rows: Vec<Value> = sessions
                        .iter()
                        .flat_map(|s| {
                            s.nodes.iter().map(move |n| {
                                json!([lg.mangle_hostname(n.hostname.as_deref()), s.row.id])
                            })
                        })
                        .collect();
                    json_response(StatusCode::OK, &Value::Array(rows))
                }
                Err(e) => {
                    log_v1_failure(&format!("Inventory tenant={name}"), &e);
                    if is_auth_failure(&e) {
                        invalid_key()
                    } else {
                        text(FAILED_INVENTORY)
                    }
                }
            }
        }
        // `app.anonymous-reads: false` closes this mirror of anonymous `GET /api/v1/sessions`
        // too, with this API's answer to a missing key
        None if !st.cfg.app.anonymous_reads => detail(StatusCode::FORBIDDEN, "Not authenticated"),
        None => match alloc::list(&st.db, &st.cfg, None).await {
            // anonymous `GET /api/v1/sessions`: every tenant's active sessions
            Ok(sessions) => {
                let rows: Vec<Value> = sessions
                    .iter()
                    .flat_map(|s| {
                        s.nodes.iter().map(move |n| {
                            json!([
                                n.id,
                                lg.mangle_hostname(n.hostname.as_deref()),
                                n.ipaddr,
                                null,
                                0,
                                n.state,
                                s.row.id.to_string(),
                                null,
                                null,
                                null,
                                null,
                                n.pool,
                                null,
                                null
                            ])
                        })
                    })
                    .collect();
                json_response(StatusCode::OK, &Value::Array(rows))
            }
            Err(e) => {
                log_v1_failure("Inventory (anonymous)", &ApiError::from(e));
                text(FAILED_INVENTORY)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// routing

/// Upstream's generated OpenAPI document of the metaclient (FastAPI 0.115, Duffy 3.4.0).
const OPENAPI: &str = r##"{"openapi":"3.1.0","info":{"title":"Duffy Metaclient for Legacy Support","description":"\nDuffy is the middle layer running [`ci.centos.org`](https://ci.centos.org). It provisions, tears\ndown and rebuilds physical and virtual machines are used to run tests in the CentOS CI Cluster.\n\nThis metaclient exposes older endpoints for legacy support and connects them to the path operations\nintroduced by the newer version of the Duffy endpoint, until the support for the older endpoints is\ndeprecated.\n","contact":{"name":"CentOS CI","email":"ci-sysadmin@centos.org"},"version":"3.4.0"},"paths":{"/Node/get":{"get":{"summary":"Request Nodes","operationId":"request_nodes_Node_get_get","security":[{"APIKeyQuery":[]}],"parameters":[{"name":"ver","in":"query","required":false,"schema":{"type":"string","default":"7","title":"Ver"}},{"name":"arch","in":"query","required":false,"schema":{"type":"string","default":"x86_64","title":"Arch"}},{"name":"count","in":"query","required":false,"schema":{"type":"integer","default":1,"title":"Count"}},{"name":"flavor","in":"query","required":false,"schema":{"type":"string","title":"Flavor"}}],"responses":{"200":{"description":"Successful Response","content":{"application/json":{"schema":{}}}},"422":{"description":"Validation Error","content":{"application/json":{"schema":{"$ref":"#/components/schemas/HTTPValidationError"}}}}}}},"/Node/done":{"get":{"summary":"Return Nodes On Completion","operationId":"return_nodes_on_completion_Node_done_get","security":[{"APIKeyQuery":[]}],"parameters":[{"name":"ssid","in":"query","required":false,"schema":{"type":"string","title":"Ssid"}}],"responses":{"200":{"description":"Successful Response","content":{"application/json":{"schema":{}}}},"422":{"description":"Validation Error","content":{"application/json":{"schema":{"$ref":"#/components/schemas/HTTPValidationError"}}}}}}},"/Node/fail":{"get":{"summary":"Extend Nodes On Failure","operationId":"extend_nodes_on_failure_Node_fail_get","security":[{"APIKeyQuery":[]}],"parameters":[{"name":"ssid","in":"query","required":false,"schema":{"type":"string","title":"Ssid"}}],"responses":{"200":{"description":"Successful Response","content":{"application/json":{"schema":{}}}},"422":{"description":"Validation Error","content":{"application/json":{"schema":{"$ref":"#/components/schemas/HTTPValidationError"}}}}}}},"/Inventory":{"get":{"summary":"Get Nodes","operationId":"get_nodes_Inventory_get","responses":{"200":{"description":"Successful Response","content":{"application/json":{"schema":{}}}}},"security":[{"APIKeyQuery":[]}]}}},"components":{"schemas":{"HTTPValidationError":{"properties":{"detail":{"items":{"$ref":"#/components/schemas/ValidationError"},"type":"array","title":"Detail"}},"type":"object","title":"HTTPValidationError"},"ValidationError":{"properties":{"loc":{"items":{"anyOf":[{"type":"string"},{"type":"integer"}]},"type":"array","title":"Location"},"msg":{"type":"string","title":"Message"},"type":{"type":"string","title":"Error Type"}},"type":"object","required":["loc","msg","type"],"title":"ValidationError"}},"securitySchemes":{"APIKeyQuery":{"type":"apiKey","in":"query","name":"key"}}}}"##;

/// The OpenAPI document served at `/openapi.json`.
pub fn openapi_document() -> &'static str {
    OPENAPI
}

fn docs_page() -> Resp {
    let html =
        "<!doctype html><html><head><title>Duffy Metaclient for Legacy Support</title></head>\
<body><h1>Duffy Metaclient for Legacy Support (duffy)</h1><p>Legacy cico endpoints: \
<code>GET /Node/get?key=&amp;ver=&amp;arch=&amp;count=&amp;flavor=</code>, \
<code>GET /Node/done?key=&amp;ssid=</code>, <code>GET /Node/fail?key=&amp;ssid=</code>, \
<code>GET /Inventory[?key=]</code>. OpenAPI document: <a href=\"/openapi.json\">/openapi.json</a>.\
</p></body></html>";
    let mut r = hyper::Response::new(super::http::full(bytes::Bytes::from_static(
        html.as_bytes(),
    )));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Route templates of the legacy listener (the `route` label of its request metrics), in
/// [`Route`]'s order, then the 307s and the paths no route matches.
pub const ROUTES: &[&str] = &[
    "/Node/get",
    "/Node/done",
    "/Node/fail",
    "/Inventory",
    "/openapi.json",
    "/docs",
    "(redirect)",
    "(unmatched)",
];
const R_REDIRECT: usize = 6;
const R_UNMATCHED: usize = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    NodeGet,
    NodeDone,
    NodeFail,
    Inventory,
    OpenApi,
    Docs,
}

fn route_of(path: &str) -> Option<Route> {
    Some(match path {
        "/Node/get" => Route::NodeGet,
        "/Node/done" => Route::NodeDone,
        "/Node/fail" => Route::NodeFail,
        "/Inventory" => Route::Inventory,
        "/openapi.json" => Route::OpenApi,
        "/docs" | "/redoc" => Route::Docs,
        _ => return None,
    })
}

/// Starlette's `redirect_slashes`: `/Inventory/` → 307 to `/Inventory` (absolute URL built from
/// the `Host` header, query kept) when the other form of the path is a route.
fn slash_redirect(path: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Resp> {
    if path == "/" {
        return None;
    }
    let alt = if path.ends_with('/') {
        path.trim_end_matches('/').to_string()
    } else {
        format!("{path}/")
    };
    route_of(&alt)?;
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    super::http::slash_redirect(&alt, query, host)
}

async fn dispatch(st: &AppState, lg: &Legacy, req: Request<Incoming>, index: &mut usize) -> Resp {
    let path = req.uri().path();
    let Some(route) = route_of(path) else {
        return match slash_redirect(path, req.uri().query(), req.headers()) {
            Some(r) => {
                *index = R_REDIRECT;
                r
            }
            None => {
                *index = R_UNMATCHED;
                detail(StatusCode::NOT_FOUND, "Not Found")
            }
        };
    };
    *index = route as usize;
    let docs = matches!(route, Route::OpenApi | Route::Docs);
    let method = req.method();
    if !(method == Method::GET || docs && method == Method::HEAD) {
        let mut r = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        r.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static(if docs { "GET, HEAD" } else { "GET" }),
        );
        return r;
    }
    let q = query_params(req.uri().query());
    match route {
        Route::NodeGet => node_get(st, lg, &q).await,
        Route::NodeDone => node_update(st, lg, &q, true).await,
        Route::NodeFail => node_update(st, lg, &q, false).await,
        Route::Inventory => inventory(st, lg, &q).await,
        Route::OpenApi => {
            let mut r = hyper::Response::new(super::http::full(bytes::Bytes::from_static(
                OPENAPI.as_bytes(),
            )));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Route::Docs => docs_page(),
    }
}

/// Handle one legacy request: dispatch, add `X-Request-Id`, log (never the query: it has the key).
pub async fn handle(st: Arc<AppState>, lg: Arc<Legacy>, req: Request<Incoming>) -> Resp {
    let start = std::time::Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut route = R_UNMATCHED;
    let mut resp = dispatch(&st, &lg, req, &mut route).await;
    tracing::info!(
        "[{request_id}] legacy {method} {path} {}",
        resp.status().as_u16()
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    st.metrics
        .legacy
        .observe(route, &method, resp.status(), start.elapsed());
    resp
}

/// Serve the legacy API on `listener` until `shutdown` (see [`super::serve_with`]).
pub async fn serve(
    listener: TcpListener,
    limits: Arc<super::server::Limits>,
    shutdown: super::server::Shutdown,
    st: Arc<AppState>,
    lg: Arc<Legacy>,
) {
    super::serve_with(listener, limits, shutdown, move |req| {
        handle(st.clone(), lg.clone(), req)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_templates_are_in_route_order() {
        for (i, path) in ROUTES[..R_REDIRECT].iter().enumerate() {
            assert_eq!(route_of(path).map(|r| r as usize), Some(i), "{path}");
        }
        assert_eq!(ROUTES[R_UNMATCHED], "(unmatched)");
    }

    fn legacy(yaml: &str) -> Result<Legacy, ConfigError> {
        let mut raw = RawConfig::default();
        raw.merge_str(yaml, "t.yaml").unwrap();
        let cfg = Config::from_raw(raw).unwrap();
        Legacy::from_config(&cfg).map(Option::unwrap)
    }

    const ROLE_MAP: &str = "metaclient:
  usermap: {k1: t1}
  poolmap:
    - arch: '^(aarch64|ppc64|ppc64le)$'
      pool: \"virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('medium') }}\"
    - arch: x86_64
      pool: \"virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('small') }}\"
  mangle_hostname: \"{{ hostname | replace('.ci.centos.org', '') }}\"
";

    #[test]
    fn poolmap_like_upstream() {
        // expected values: upstream's lookup_pool_from_map (Jinja2 3.1) on the same map
        let l = legacy(ROLE_MAP).unwrap();
        let p = |v, a, f| l.lookup_pool(v, a, f).unwrap();
        assert_eq!(
            p(Some("8-stream"), Some("x86_64"), None).as_deref(),
            Some("virtual-centos8stream-x86_64-small")
        );
        assert_eq!(
            p(Some("8-stream"), Some("aarch64"), None).as_deref(),
            Some("virtual-centos8stream-aarch64-medium")
        );
        assert_eq!(
            p(Some("9"), Some("ppc64le"), Some("large")).as_deref(),
            Some("virtual-centos9-ppc64le-large")
        );
        assert_eq!(
            p(Some(""), Some("x86_64"), Some("")).as_deref(),
            Some("virtual-centos-x86_64-")
        );
        assert_eq!(p(Some("7"), Some("i386"), None), None);
        assert_eq!(p(Some("7"), Some("aarch64x"), None), None);
        assert_eq!(p(Some("7"), None, None), None);
        assert_eq!(
            l.mangle_hostname(Some("n1.ci.centos.org")),
            json!("n1"),
            "mangled"
        );
        assert_eq!(l.mangle_hostname(None), json!(""));
    }

    #[test]
    fn regex_selectors_match_from_the_start_and_first_match_wins() {
        let l = legacy(
            "metaclient:
  poolmap:
    - {ver: '^9', arch: x86_64, pool: 'first'}
    - {ver: '^(8|9)$', pool: 'second-{{ ver }}'}
    - {ver: '', flavor: '', pool: 'catch-all-{{ flavor }}'}
",
        )
        .unwrap();
        let p = |v, a, f| l.lookup_pool(v, a, f).unwrap();
        // '^9' does not end with '$': an exact string, not a regex
        assert_eq!(
            p(Some("9"), Some("x86_64"), None).as_deref(),
            Some("second-9")
        );
        assert_eq!(
            p(Some("^9"), Some("x86_64"), None).as_deref(),
            Some("first")
        );
        assert_eq!(
            p(Some("7"), Some("x86_64"), Some("tiny")).as_deref(),
            Some("catch-all-tiny")
        );
        assert_eq!(
            p(Some("7"), Some("x86_64"), None).as_deref(),
            Some("catch-all-")
        );
        assert_eq!(l.mangle_hostname(Some("h.example")), json!("h.example"));
        assert_eq!(l.mangle_hostname(None), Value::Null);
    }

    #[test]
    fn templates_render_like_jinja2() {
        // expected values from jinja2.Template(src).render(**ctx) (Jinja2 3.1.6)
        let env = jinja2_env();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("{{ x }}", &[], ""),
            ("{{ x | replace('a','b') }}", &[], ""),
            ("{{ x | default('d') }}", &[], "d"),
            ("{{ x | default('d') }}", &[("x", "")], ""),
            ("{{ x | default('d', true) }}", &[("x", "")], "d"),
            ("{{ x | upper }}", &[("x", "ab")], "AB"),
            ("{{ x | lower }}{{ x|length }}", &[("x", "AB")], "ab2"),
            ("{{ x ~ 'z' }}", &[], "z"),
            ("{% if x %}yes{% else %}no{% endif %}", &[], "no"),
            ("a\n", &[], "a"),
            (
                "{{ x | replace('-', '') | upper }}",
                &[("x", "8-stream")],
                "8STREAM",
            ),
            ("{{ x | trim }}", &[("x", " a ")], "a"),
            ("{{ x }}", &[("x", "<&>")], "<&>"),
            ("{{ x[0] }}", &[("x", "abc")], "a"),
            ("{{ x.split('-')[0] }}", &[("x", "8-stream")], "8"),
            ("{{ x.split('.')[0] }}", &[("x", "n1.ci.centos.org")], "n1"),
            ("{{ x | int + 1 }}", &[("x", "8")], "9"),
            ("{{ x is defined }}", &[], "False"),
            ("{{ x is none }}", &[], "False"),
            ("{{ x | string }}", &[], ""),
        ];
        for (src, c, want) in cases {
            let got = env.render_str(src, ctx(c));
            assert_eq!(got.as_deref().ok(), Some(*want), "{src} {c:?}: {got:?}");
        }
    }

    #[test]
    fn invalid_templates_and_regexes_are_config_errors_naming_the_key() {
        let cases = [
            (
                "metaclient: {poolmap: [{pool: a}, {pool: '{{ ver '}]}",
                "t.yaml: metaclient.poolmap[1].pool: invalid Jinja2 template",
            ),
            (
                "metaclient: {poolmap: [{pool: '{{ ver | nosuchfilter }}'}]}",
                "t.yaml: metaclient.poolmap[0].pool: invalid Jinja2 template",
            ),
            (
                "metaclient: {poolmap: [{pool: a}, {pool: b}, {arch: '^(x86_64$', pool: c}]}",
                "t.yaml: metaclient.poolmap[2].arch: invalid regular expression",
            ),
            (
                "metaclient: {mangle_hostname: '{% if %}'}",
                "t.yaml: metaclient.mangle_hostname: invalid Jinja2 template",
            ),
        ];
        for (yaml, want) in cases {
            let e = legacy(yaml).unwrap_err().to_string();
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn query_strings_parse_like_starlette() {
        let q = query_params(Some(
            "key=a%2Bb+c&count=1&count=2&flag&=x&bad=%zz%4&u=%C3%A9%ff",
        ));
        assert_eq!(q["key"], "a+b c");
        assert_eq!(q["count"], "2");
        assert_eq!(q["flag"], "");
        assert_eq!(q[""], "x");
        assert_eq!(q["bad"], "%zz%4");
        assert_eq!(q["u"], "é\u{fffd}");
        assert!(query_params(None).is_empty());
    }

    #[test]
    fn integers_parse_like_pydantic() {
        // accepted / rejected as pydantic 2.11 TypeAdapter(int).validate_python(str)
        for (s, v) in [
            ("1", 1),
            (" 1 ", 1),
            ("1.0", 1),
            ("+1", 1),
            ("-1", -1),
            ("1_000", 1000),
            ("00012", 12),
            ("\t2\n", 2),
            ("1.00000", 1),
            ("-0", 0),
            ("1_0.0", 10),
            ("00.00", 0),
            ("\u{a0}1\u{a0}", 1),
            ("99999999999999999999", i64::MAX),
        ] {
            assert_eq!(pydantic_int(s), Some(v), "{s:?}");
        }
        for s in [
            "1.5", "0x10", "１", "1e3", "", "1.", ".0", " ", "1__0", "_1", "1_", "nan", "+-1",
            "1 0", "1.0_0", "1\0", "-", "+", "0.", "1.0.0", "٣",
        ] {
            assert_eq!(pydantic_int(s), None, "{s:?}");
        }
    }
}
