//! The library half of `duffy client`: a small HTTP client for the REST API v1 (hyper 1 +
//! hyper-util's legacy client; `https://` through rustls with the system's CA certificates, or
//! the Mozilla roots when the system has none) and upstream's three output formats, byte for
//! byte (compat spec §6.4):
//!
//! * [`format_json`]: Python's `json.dumps(result, indent=4)` (upstream 3.4.0's formatter);
//! * [`format_yaml`]: PyYAML's `yaml.dump(result)` (block style, keys sorted, 80 columns);
//! * [`format_flat`]: upstream's `DuffyFlatFormatter`, with bug 25 fixed (an API error prints
//!   `error='<detail>'` instead of crashing).
//!
//! Like upstream's `DuffyClient._query_method`, a response with an unexpected status whose body
//! is a JSON object with a string `detail` is a *result* (`{"error": {"detail": …}}`), anything
//! else is a [`ClientError`]. The API key only ever goes into the `Authorization` header: it is
//! never part of an error, a log line or a displayed URL.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use crate::output::{self, python_float};

/// What can go wrong talking to the API (every message is one line and free of secrets).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API URL is unusable.
    #[error("invalid API URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// TLS could not be set up for an `https://` URL.
    #[error("https: {0}")]
    Tls(String),
    /// No connection / the request could not be sent or its response not read.
    #[error("can't reach the Duffy API at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// An unexpected status without a `{"detail": "…"}` body (upstream raises here).
    #[error("{method} {url}: HTTP {status}{detail}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        /// `": <summary of the body>"` or empty
        detail: String,
    },
    /// The expected status, but a body that isn't JSON.
    #[error("{method} {url}: HTTP {status}: the response is not JSON: {reason}")]
    BadResponse {
        method: Method,
        url: String,
        status: StatusCode,
        reason: String,
    },
}

/// The API's base URL split into what a request needs (user info dropped, never shown).
#[derive(Debug, Clone)]
struct BaseUrl {
    https: bool,
    /// `host[:port]`
    authority: String,
    /// path without trailing `/`, e.g. `/api/v1`
    path: String,
}

impl BaseUrl {
    fn parse(url: &str) -> Result<BaseUrl, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: redact_userinfo(url),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err(bad("expected an http:// or https:// URL")),
        };
        let auth = uri.authority().ok_or_else(|| bad("no host"))?;
        if auth.host().is_empty() {
            return Err(bad("no host"));
        }
        let authority = match auth.port_u16() {
            Some(p) => format!("{}:{p}", auth.host()),
            None => auth.host().to_string(),
        };
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl {
            https,
            authority,
            path,
        })
    }

    /// `path` is absolute (`/pools/x`), joined like httpx joins it to a `base_url`.
    fn join(&self, path: &str) -> String {
        format!(
            "{}://{}{}{}",
            if self.https { "https" } else { "http" },
            self.authority,
            self.path,
            path
        )
    }
}

/// `scheme://user:pass@host/…` → `scheme://host/…` (for messages).
fn redact_userinfo(url: &str) -> String {
    if let Some(i) = url.find("://") {
        let rest = &url[i + 3..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{}{}", &url[..i + 3], &rest[at + 1..]);
        }
    }
    url.to_string()
}

/// Percent-encode one path segment (everything but RFC 3986 unreserved characters).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

enum Http {
    Plain(LegacyClient<HttpConnector, Full<Bytes>>),
    Tls(LegacyClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// One `nodes_specs` item of a session request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesSpec {
    pub pool: String,
    pub quantity: u64,
}

/// Parse a `request-session` argument `pool=P,quantity=N` exactly as upstream's
/// `NodesSpecType` does (same messages), plus a check of `quantity` (an integer ≥ 1) that
/// upstream leaves to a pydantic traceback.
pub fn parse_nodes_spec(arg: &str) -> Result<NodesSpec, String> {
    let mut pool = None;
    let mut quantity = None;
    let mut seen: Vec<&str> = Vec::new();
    for item in arg.split(',') {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("Expected `key=value`, got {item:?}"))?;
        if seen.contains(&key) {
            return Err(format!("Duplicate key: {key}"));
        }
        seen.push(key);
        match key {
            "pool" => pool = Some(value),
            "quantity" => quantity = Some(value),
            _ => {}
        }
    }
    if seen.len() != 2 {
        return Err("Both `pool` and `quantity` must be set".into());
    }
    let (Some(pool), Some(quantity)) = (pool, quantity) else {
        return Err("Both `pool` and `quantity` must be set".into());
    };
    let quantity = match quantity.trim().parse::<u64>() {
        Ok(q) if q >= 1 => q,
        _ => {
            return Err(format!(
                "`quantity` must be an integer greater than or equal to 1, got {quantity:?}"
            ))
        }
    };
    Ok(NodesSpec {
        pool: pool.to_string(),
        quantity,
    })
}

/// A client of one Duffy API (`…/api/v1`).
pub struct Client {
    base: BaseUrl,
    auth: Option<HeaderValue>,
    http: Http,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the Authorization value
        f.debug_struct("Client")
            .field("url", &self.base.join(""))
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// `url` is the API base (`https://duffy.ci.centos.org/api/v1`); `auth` tenant name + key
    /// for HTTP Basic (None: anonymous requests). Call inside a tokio runtime.
    pub fn new(url: &str, auth: Option<(&str, &str)>) -> Result<Client, ClientError> {
        use base64::Engine as _;
        let base = BaseUrl::parse(url)?;
        let auth = match auth {
            None => None,
            Some((name, key)) => {
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{name}:{key}"));
                let mut v = HeaderValue::from_str(&format!("Basic {token}"))
                    .expect("base64 is a valid header value");
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(60)));
        conn.set_nodelay(true);
        let builder = LegacyClient::builder(TokioExecutor::new());
        let http = if base.https {
            conn.enforce_http(false);
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let tls = match hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider.clone())
            {
                Ok(b) => b,
                Err(native) => {
                    tracing::debug!(
                        "no usable system CA certificates ({native}): using the Mozilla roots"
                    );
                    hyper_rustls::HttpsConnectorBuilder::new()
                        .with_provider_and_webpki_roots(provider)
                        .map_err(|e| ClientError::Tls(e.to_string()))?
                }
            };
            Http::Tls(builder.build(tls.https_only().enable_http1().wrap_connector(conn)))
        } else {
            Http::Plain(builder.build(conn))
        };
        Ok(Client { base, auth, http })
    }

    /// The URL of an API path (for messages; no user info).
    pub fn url(&self, path: &str) -> String {
        self.base.join(path)
    }

    /// Send one request, return status and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = self.base.join(path);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(
                USER_AGENT,
                concat!("duffy-client/", env!("CARGO_PKG_VERSION")),
            )
            .header("accept", "application/json");
        if let Some(a) = &self.auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        let payload = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("serialise JSON"))
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(payload)).map_err(|e| ClientError::Url {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        tracing::debug!(%method, %url, "request");
        let connect_err = |e: &(dyn std::error::Error + 'static)| ClientError::Connect {
            url: url.clone(),
            reason: root_cause(e),
        };
        let resp = match &self.http {
            Http::Plain(c) => c.request(req).await,
            Http::Tls(c) => c.request(req).await,
        }
        .map_err(|e| connect_err(&e))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect_err(&e))?
            .to_bytes();
        tracing::debug!(%method, %url, status = status.as_u16(), bytes = body.len(), "response");
        Ok((status, body))
    }

    /// Upstream's `_query_method`: the decoded body when the status is `expected`; an error
    /// document `{"error": {"detail": …, …}}` when another status comes with a JSON object
    /// having a string `detail`; else an error.
    pub async fn query(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: StatusCode,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.send(method.clone(), path, body).await?;
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if status != expected {
            if let Ok(Value::Object(m)) = &parsed {
                if let Some(Value::String(detail)) = m.get("detail") {
                    let mut err = Map::new();
                    err.insert("detail".into(), Value::String(detail.clone()));
                    for (k, v) in m {
                        if k != "detail" {
                            err.insert(k.clone(), v.clone());
                        }
                    }
                    return Ok(json!({ "error": Value::Object(err) }));
                }
            }
            return Err(ClientError::Status {
                method,
                url: self.url(path),
                status,
                detail: summarize_error_body(&bytes, parsed.ok()),
            });
        }
        parsed.map_err(|e| ClientError::BadResponse {
            method,
            url: self.url(path),
            status,
            reason: e.to_string(),
        })
    }

    /// `GET /pools`
    pub async fn list_pools(&self) -> Result<Value, ClientError> {
        self.query(Method::GET, "/pools", None, StatusCode::OK)
            .await
    }

    /// `GET /pools/NAME`
    pub async fn show_pool(&self, name: &str) -> Result<Value, ClientError> {
        let path = format!("/pools/{}", path_segment(name));
        self.query(Method::GET, &path, None, StatusCode::OK).await
    }

    /// `GET /sessions`
    pub async fn list_sessions(&self) -> Result<Value, ClientError> {
        self.query(Method::GET, "/sessions", None, StatusCode::OK)
            .await
    }

    /// `GET /sessions/ID`
    pub async fn show_session(&self, id: i64) -> Result<Value, ClientError> {
        self.query(
            Method::GET,
            &format!("/sessions/{id}"),
            None,
            StatusCode::OK,
        )
        .await
    }

    /// `POST /sessions` with upstream's body `{"tenant_id": null, "nodes_specs": […]}`.
    pub async fn request_session(&self, specs: &[NodesSpec]) -> Result<Value, ClientError> {
        let specs: Vec<Value> = specs
            .iter()
            .map(|s| json!({"quantity": s.quantity, "pool": s.pool}))
            .collect();
        let body = json!({"tenant_id": null, "nodes_specs": specs});
        self.query(Method::POST, "/sessions", Some(&body), StatusCode::CREATED)
            .await
    }

    /// `PUT /sessions/ID` `{"active": false, "expires_at": null}` (upstream's body).
    pub async fn retire_session(&self, id: i64) -> Result<Value, ClientError> {
        let body = json!({"active": false, "expires_at": null});
        self.query(
            Method::PUT,
            &format!("/sessions/{id}"),
            Some(&body),
            StatusCode::OK,
        )
        .await
    }

    /// `PUT /sessions/ID` `{"expires_at": …}`: `+2h` extends from the current expiry, an ISO
    /// 8601 datetime sets it (the server clamps to the tenant's maximum lifetime).
    pub async fn update_session(&self, id: i64, expires_at: &str) -> Result<Value, ClientError> {
        let body = json!({ "expires_at": expires_at });
        self.query(
            Method::PUT,
            &format!("/sessions/{id}"),
            Some(&body),
            StatusCode::OK,
        )
        .await
    }
}

/// The innermost cause of an error chain (e.g. `Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut msgs = vec![cur.to_string()];
    while let Some(next) = cur.source() {
        msgs.push(next.to_string());
        cur = next;
    }
    // hyper-util's outer messages ("client error (Connect)") say little: keep the last one
    // plus, when it adds something, the one before it.
    let last = msgs.pop().unwrap_or_default();
    match msgs.pop() {
        Some(prev) if !prev.contains(&last) && !prev.starts_with("client error") => {
            format!("{prev}: {last}")
        }
        _ => last,
    }
}

/// `": <what the body says>"` for an unexpected status (validation errors: their messages).
fn summarize_error_body(bytes: &[u8], parsed: Option<Value>) -> String {
    let text = match parsed {
        Some(Value::Object(m)) => match m.get("detail") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    let loc = i
                        .get("loc")
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .map(|p| match p {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect::<Vec<_>>()
                                .join(".")
                        })
                        .unwrap_or_default();
                    let msg = i.get("msg").and_then(Value::as_str).unwrap_or("invalid");
                    if loc.is_empty() {
                        msg.to_string()
                    } else {
                        format!("{loc}: {msg}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => Value::Object(m).to_string(),
        },
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(bytes).trim().to_string(),
    };
    let mut one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        one_line = one_line.chars().take(300).collect::<String>() + "…";
    }
    if one_line.is_empty() {
        String::new()
    } else {
        format!(": {one_line}")
    }
}

// ---------------------------------------------------------------------------------------------
// Output formats
// ---------------------------------------------------------------------------------------------

/// Is `result` an API error document (`{"error": {"detail": …}}`)?
pub fn is_error(result: &Value) -> bool {
    result.get("error").is_some()
}

/// `str()` of a JSON number as Python's `json.loads` would have typed it.
fn python_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        python_float(n.as_f64().unwrap_or(0.0))
    } else {
        n.to_string()
    }
}

/// `json.dumps(result, indent=4)`, as upstream's `duffy client` prints it (no final newline).
pub fn format_json(v: &Value) -> String {
    output::to_python_json_indented(v)
}

/// `yaml.dump(result)` of PyYAML (ends with a newline).
pub fn format_yaml(v: &Value) -> String {
    let mut e = YamlEmitter::default();
    e.document(v);
    e.out
}

/// upstream's `DuffyFlatFormatter.format_key_value`.
fn flat_kv(out: &mut String, key: &str, v: &Value) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    match v {
        Value::Null => {}
        Value::Bool(true) => out.push_str("TRUE"),
        Value::Bool(false) => out.push_str("FALSE"),
        Value::Number(n) => out.push_str(&python_number(n)),
        Value::String(s) => out.push_str(&crate::output::shell_quote(s)),
        other => out.push_str(&crate::output::shell_quote(&other.to_string())),
    }
}

fn flat_pool(pool: &Value) -> String {
    let mut line = String::new();
    flat_kv(
        &mut line,
        "pool_name",
        pool.get("name").unwrap_or(&Value::Null),
    );
    let fill = pool
        .get("fill-level")
        .or_else(|| pool.get("fill_level"))
        .unwrap_or(&Value::Null);
    flat_kv(&mut line, "fill_level", fill);
    if let Some(levels) = pool.get("levels") {
        for state in [
            "provisioning",
            "ready",
            "contextualizing",
            "deployed",
            "deprovisioning",
        ] {
            flat_kv(
                &mut line,
                &format!("levels_{state}"),
                levels.get(state).unwrap_or(&Value::Null),
            );
        }
    }
    line
}

fn flat_session(session: &Value, lines: &mut Vec<String>) {
    let null = Value::Null;
    let mut nodes: Vec<&Value> = session
        .get("nodes")
        .and_then(Value::as_array)
        .map(|n| n.iter().collect())
        .unwrap_or_default();
    let key = |n: &Value, k: &str| n.get(k).and_then(Value::as_str).map(str::to_string);
    nodes.sort_by_key(|n| (key(n, "pool"), key(n, "hostname"), key(n, "ipaddr")));
    for node in nodes {
        let mut line = String::new();
        flat_kv(&mut line, "session_id", session.get("id").unwrap_or(&null));
        flat_kv(&mut line, "active", session.get("active").unwrap_or(&null));
        for k in ["created_at", "retired_at"] {
            flat_kv(&mut line, k, session.get(k).unwrap_or(&null));
        }
        for k in ["pool", "hostname", "ipaddr"] {
            flat_kv(&mut line, k, node.get(k).unwrap_or(&null));
        }
        lines.push(line);
    }
}

/// upstream's `DuffyFlatFormatter.format` (no final newline; may be empty). API errors give
/// `error='<detail>'` (upstream 3.4.0 crashes there, spec §12 bug 25).
pub fn format_flat(result: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(err) = result.get("error") {
        let mut line = String::new();
        flat_kv(
            &mut line,
            "error",
            err.get("detail").unwrap_or(&Value::Null),
        );
        lines.push(line);
    } else if let Some(pool) = result.get("pool") {
        lines.push(flat_pool(pool));
    } else if let Some(pools) = result.get("pools") {
        for p in pools.as_array().into_iter().flatten() {
            lines.push(flat_pool(p));
        }
    } else if let Some(s) = result.get("session") {
        flat_session(s, &mut lines);
    } else if let Some(ss) = result.get("sessions") {
        for s in ss.as_array().into_iter().flatten() {
            flat_session(s, &mut lines);
        }
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// PyYAML's emitter (yaml/emitter.py, default `yaml.dump` settings: block style, sort_keys,
// indent 2, width 80, allow_unicode False), restricted to JSON values. A faithful port of the
// parts these documents reach, so that the bytes equal upstream's.
// ---------------------------------------------------------------------------------------------

static RE_BOOL: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
    )
    .expect("regex")
});
static RE_FLOAT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    )
    .expect("regex")
});
static RE_INT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
    )
    .expect("regex")
});
static RE_NULL: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^(?:~|null|Null|NULL|)$").expect("regex"));
static RE_TIMESTAMP: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
    )
    .expect("regex")
});

/// Would this plain scalar be read back as something other than a string (PyYAML's YAML 1.1
/// implicit resolvers)? Python's `$` also matches before a final newline.
fn resolves_to_non_str(value: &str) -> bool {
    if value.is_empty() {
        return true; // null
    }
    let v = value.strip_suffix('\n').unwrap_or(value);
    let first = value.chars().next().unwrap_or(' ');
    let by_first = |chars: &str| chars.contains(first);
    (by_first("yYnNtTfFoO") && RE_BOOL.is_match(v))
        || (by_first("-+0123456789.") && RE_FLOAT.is_match(v))
        || (by_first("-+0123456789") && RE_INT.is_match(v))
        || (first == '<' && v == "<<")
        || (by_first("~nN") && RE_NULL.is_match(v))
        || (by_first("0123456789") && RE_TIMESTAMP.is_match(v))
        || (first == '=' && v == "=")
}

#[derive(Debug, Default, Clone, Copy)]
struct Analysis {
    empty: bool,
    multiline: bool,
    allow_flow_plain: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_space_or_break(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

fn analyze_scalar(s: &[char]) -> Analysis {
    if s.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_flow_plain: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_indicators = false;
    let mut flow_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    let starts = |p: &str| s.iter().take(3).collect::<String>() == p;
    if starts("---") || starts("...") {
        block_indicators = true;
        flow_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = s.len() == 1 || is_space_or_break(s[1]);
    let mut previous_space = false;
    let mut previous_break = false;
    let n = s.len();
    let mut index = 0;
    while index < n {
        let ch = s[index];
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                flow_indicators = true;
                block_indicators = true;
            }
            if ch == '?' || ch == ':' {
                flow_indicators = true;
                if followed_by_whitespace {
                    block_indicators = true;
                }
            }
            if ch == '-' && followed_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        } else {
            if ",?[]{}".contains(ch) {
                flow_indicators = true;
            }
            if ch == ':' {
                flow_indicators = true;
                if followed_by_whitespace {
                    block_indicators = true;
                }
            }
            if ch == '#' && preceded_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || ('\x20'..='\x7e').contains(&ch)) {
            // unicode characters are special (allow_unicode is False), and so is the rest
            special_characters = true;
        }
        if ch == ' ' {
            if index == 0 {
                leading_space = true;
            }
            if index == n - 1 {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            if index == 0 {
                leading_break = true;
            }
            if index == n - 1 {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        index += 1;
        preceded_by_whitespace = is_space_or_break(ch);
        followed_by_whitespace = index + 1 >= n || is_space_or_break(s[index + 1]);
    }
    let mut a = Analysis {
        empty: false,
        multiline: line_breaks,
        allow_flow_plain: true,
        allow_block_plain: true,
        allow_single_quoted: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if break_space {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if space_break || special_characters {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if line_breaks {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if flow_indicators {
        a.allow_flow_plain = false;
    }
    if block_indicators {
        a.allow_block_plain = false;
    }
    a
}

const BEST_INDENT: usize = 2;
const BEST_WIDTH: usize = 80;

#[derive(Default, Clone, Copy)]
struct Ctx {
    root: bool,
    mapping: bool,
    simple_key: bool,
}

struct YamlEmitter {
    out: String,
    indents: Vec<Option<usize>>,
    indent: Option<usize>,
    flow_level: usize,
    column: usize,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
}

impl Default for YamlEmitter {
    fn default() -> Self {
        YamlEmitter {
            out: String::new(),
            indents: Vec::new(),
            indent: None,
            flow_level: 0,
            column: 0,
            whitespace: true,
            indention: true,
            open_ended: false,
        }
    }
}

impl YamlEmitter {
    fn document(&mut self, v: &Value) {
        self.node(
            v,
            Ctx {
                root: true,
                ..Ctx::default()
            },
        );
        // document end
        self.write_indent();
        // stream end
        if self.open_ended {
            self.write_indicator("...", true, false, false);
            self.write_indent();
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        match self.indent {
            None => self.indent = Some(if flow { BEST_INDENT } else { 0 }),
            Some(i) if !indentless => self.indent = Some(i + BEST_INDENT),
            Some(_) => {}
        }
    }

    fn pop_indent(&mut self) {
        self.indent = self.indents.pop().flatten();
    }

    fn node(&mut self, v: &Value, ctx: Ctx) {
        match v {
            Value::Null => self.scalar("null", false, ctx),
            Value::Bool(b) => self.scalar(if *b { "true" } else { "false" }, false, ctx),
            Value::Number(n) => {
                let text = if n.is_f64() {
                    // represent_float: repr().lower(), '.0' added before a bare exponent
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.is_nan() {
                        ".nan".to_string()
                    } else if f.is_infinite() {
                        if f > 0.0 { ".inf" } else { "-.inf" }.to_string()
                    } else {
                        let r = python_float(f).to_lowercase();
                        if !r.contains('.') && r.contains('e') {
                            r.replacen('e', ".0e", 1)
                        } else {
                            r
                        }
                    }
                } else {
                    n.to_string()
                };
                self.scalar(&text, false, ctx)
            }
            Value::String(s) => self.scalar(s, true, ctx),
            Value::Array(items) => {
                if self.flow_level > 0 || items.is_empty() {
                    self.write_indicator("[", true, true, false);
                    // an empty flow sequence: nothing inside
                    self.write_indicator("]", false, false, false);
                } else {
                    let indentless = ctx.mapping && !self.indention;
                    self.increase_indent(false, indentless);
                    for item in items {
                        self.write_indent();
                        self.write_indicator("-", true, false, true);
                        self.node(item, Ctx::default());
                    }
                    self.pop_indent();
                }
            }
            Value::Object(m) => {
                if self.flow_level > 0 || m.is_empty() {
                    self.write_indicator("{", true, true, false);
                    self.write_indicator("}", false, false, false);
                } else {
                    self.increase_indent(false, false);
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    for k in keys {
                        self.write_indent();
                        let chars: Vec<char> = k.chars().collect();
                        let a = analyze_scalar(&chars);
                        // check_simple_key: the prepared tag `!!str` counts too
                        let simple = chars.len() + 5 < 128 && !a.empty && !a.multiline;
                        let key = Value::String(k.clone());
                        if simple {
                            self.node(
                                &key,
                                Ctx {
                                    mapping: true,
                                    simple_key: true,
                                    ..Ctx::default()
                                },
                            );
                            self.write_indicator(":", false, false, false);
                        } else {
                            self.write_indicator("?", true, false, true);
                            self.node(
                                &key,
                                Ctx {
                                    mapping: true,
                                    ..Ctx::default()
                                },
                            );
                            self.write_indent();
                            self.write_indicator(":", true, false, true);
                        }
                        self.node(
                            &m[k],
                            Ctx {
                                mapping: true,
                                ..Ctx::default()
                            },
                        );
                    }
                    self.pop_indent();
                }
            }
        }
    }

    /// `is_str`: a string (plain only when it reads back as a string); otherwise the text of a
    /// null/bool/number, which always resolves to its own type.
    fn scalar(&mut self, text: &str, is_str: bool, ctx: Ctx) {
        self.increase_indent(true, false);
        let chars: Vec<char> = text.chars().collect();
        let a = analyze_scalar(&chars);
        let implicit_plain = !is_str || !resolves_to_non_str(text);
        let style = if implicit_plain
            && !(ctx.simple_key && (a.empty || a.multiline))
            && ((self.flow_level > 0 && a.allow_flow_plain)
                || (self.flow_level == 0 && a.allow_block_plain))
        {
            ' '
        } else if a.allow_single_quoted && !(ctx.simple_key && a.multiline) {
            '\''
        } else {
            '"'
        };
        let split = !ctx.simple_key;
        match style {
            '"' => self.write_double_quoted(&chars, split),
            '\'' => self.write_single_quoted(&chars, split),
            _ => self.write_plain(&chars, split, ctx.root),
        }
        self.pop_indent();
    }

    fn write(&mut self, s: &str) {
        self.column += s.chars().count();
        self.out.push_str(s);
    }

    fn write_chars(&mut self, s: &[char]) {
        self.column += s.len();
        self.out.extend(s.iter());
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        whitespace: bool,
        indention: bool,
    ) {
        if !self.whitespace && need_whitespace {
            self.write(" ");
        }
        self.write(indicator);
        self.whitespace = whitespace;
        self.indention = self.indention && indention;
        self.open_ended = false;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.write(&pad);
        }
    }

    fn write_line_break(&mut self, data: Option<char>) {
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
        self.out.push(data.unwrap_or('\n'));
    }

    fn write_plain(&mut self, text: &[char], split: bool, root: bool) {
        if root {
            self.open_ended = true;
        }
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write(" ");
        }
        self.whitespace = false;
        self.indention = false;
        let mut spaces = false;
        let mut breaks = false;
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if text[start] == '\n' {
                        self.write_line_break(None);
                    }
                    for &br in &text[start..end] {
                        self.write_line_break(if br == '\n' { None } else { Some(br) });
                    }
                    self.write_indent();
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
    }

    fn write_single_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("'", true, false, false);
        let mut spaces = false;
        let mut breaks = false;
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if text[start] == '\n' {
                        self.write_line_break(None);
                    }
                    for &br in &text[start..end] {
                        self.write_line_break(if br == '\n' { None } else { Some(br) });
                    }
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c) || c == '\'') && start < end {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.write_indicator("'", false, false, false);
    }

    fn write_double_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("\"", true, false, false);
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            let special = match ch {
                None => true,
                Some(c) => {
                    matches!(
                        c,
                        '"' | '\\' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
                    ) || !('\x20'..='\x7e').contains(&c)
                }
            };
            if special {
                if start < end {
                    self.write_chars(&text[start..end]);
                    start = end;
                }
                if let Some(c) = ch {
                    let data = match c {
                        '\0' => "\\0".to_string(),
                        '\x07' => "\\a".to_string(),
                        '\x08' => "\\b".to_string(),
                        '\x09' => "\\t".to_string(),
                        '\x0a' => "\\n".to_string(),
                        '\x0b' => "\\v".to_string(),
                        '\x0c' => "\\f".to_string(),
                        '\x0d' => "\\r".to_string(),
                        '\x1b' => "\\e".to_string(),
                        '"' => "\\\"".to_string(),
                        '\\' => "\\\\".to_string(),
                        '\u{85}' => "\\N".to_string(),
                        '\u{a0}' => "\\_".to_string(),
                        '\u{2028}' => "\\L".to_string(),
                        '\u{2029}' => "\\P".to_string(),
                        c if (c as u32) <= 0xff => format!("\\x{:02X}", c as u32),
                        c if (c as u32) <= 0xffff => format!("\\u{:04X}", c as u32),
                        c => format!("\\U{:08X}", c as u32),
                    };
                    self.write(&data);
                    start = end + 1;
                }
            }
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                && self.column as isize + end as isize - start as isize > BEST_WIDTH as isize
                && split
            {
                let mut data: String = text[start.min(end)..end].iter().collect();
                data.push('\\');
                if start < end {
                    start = end;
                }
                self.write(&data);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text[start] == ' ' {
                    self.write("\\");
                }
            }
            end += 1;
        }
        self.write_indicator("\"", false, false, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_spec_args() {
        assert_eq!(
            parse_nodes_spec("pool=p1,quantity=2"),
            Ok(NodesSpec {
                pool: "p1".into(),
                quantity: 2
            })
        );
        assert_eq!(parse_nodes_spec("quantity=1,pool=a=b").unwrap().pool, "a=b");
        assert_eq!(
            parse_nodes_spec("pool=a,pool=b").unwrap_err(),
            "Duplicate key: pool"
        );
        for bad in [
            "pool=a",
            "quantity=1",
            "pool=a,quantity=1,x=2",
            "pool=a,x=1",
        ] {
            assert_eq!(
                parse_nodes_spec(bad).unwrap_err(),
                "Both `pool` and `quantity` must be set",
                "{bad}"
            );
        }
        assert!(parse_nodes_spec("pool=a,quantity=0")
            .unwrap_err()
            .contains("quantity"));
        assert!(parse_nodes_spec("pool=a,quantity=x")
            .unwrap_err()
            .contains("quantity"));
        assert!(parse_nodes_spec("pool").unwrap_err().contains("key=value"));
    }

    #[test]
    fn base_url() {
        let b = BaseUrl::parse("https://duffy.ci.centos.org/api/v1/").unwrap();
        assert_eq!(b.join("/pools"), "https://duffy.ci.centos.org/api/v1/pools");
        let b = BaseUrl::parse("http://tenant:secret@127.0.0.1:8080/api/v1").unwrap();
        assert_eq!(b.join("/sessions"), "http://127.0.0.1:8080/api/v1/sessions");
        let e = BaseUrl::parse("ftp://user:secret@x/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert!(BaseUrl::parse("not a url").is_err());
        assert_eq!(path_segment("a b/c-d_e.f"), "a%20b%2Fc-d_e.f");
    }

    #[test]
    fn python_floats() {
        for (f, s) in [
            (21600.0, "21600.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(python_float(f), s, "{f}");
        }
    }

    #[test]
    fn json_indent4() {
        let v = json!({"action": "get", "pools": [{"name": "p", "fill-level": 5}], "e": [], "o": {}, "x": "é\u{7f}", "f": 21600.0});
        assert_eq!(
            format_json(&v),
            "{\n    \"action\": \"get\",\n    \"pools\": [\n        {\n            \"name\": \"p\",\n            \"fill-level\": 5\n        }\n    ],\n    \"e\": [],\n    \"o\": {},\n    \"x\": \"\\u00e9\\u007f\",\n    \"f\": 21600.0\n}"
        );
    }

    #[test]
    fn yaml_like_pyyaml() {
        let v = json!({
            "b": [{"y": 1, "x": null}, [1, 2], [], {}],
            "a": {"t": "2026-11-25T17:06:42.317916Z", "s": "it's", "n": "123", "y": "yes",
                  "e": "", "u": "é", "c": "a: b", "h": "#x", "ok": "plain text"},
        });
        assert_eq!(
            format_yaml(&v),
            "a:\n  c: 'a: b'\n  e: ''\n  h: '#x'\n  n: '123'\n  ok: plain text\n  s: it's\n  t: '2026-11-25T17:06:42.317916Z'\n  u: \"\\xE9\"\n  y: 'yes'\nb:\n- x: null\n  y: 1\n- - 1\n  - 2\n- []\n- {}\n"
        );
    }

    #[test]
    fn flat_formats() {
        let pools = json!({"action": "get", "pools": [{"name": "p", "fill-level": 5}]});
        assert_eq!(format_flat(&pools), "pool_name='p' fill_level=5");
        let pool = json!({"action": "get", "pool": {"name": "p", "fill-level": 5, "levels":
            {"provisioning": 0, "ready": 5, "contextualizing": 0, "deployed": 1, "deprovisioning": 0}}});
        assert_eq!(
            format_flat(&pool),
            "pool_name='p' fill_level=5 levels_provisioning=0 levels_ready=5 levels_contextualizing=0 levels_deployed=1 levels_deprovisioning=0"
        );
        let s = json!({"action": "get", "session": {"id": 3, "active": true, "created_at": "T",
            "retired_at": null, "nodes": [
                {"pool": "p", "hostname": "b", "ipaddr": "127.0.0.2"},
                {"pool": "p", "hostname": "a", "ipaddr": "127.0.0.3"}]}});
        assert_eq!(
            format_flat(&s),
            "session_id=3 active=TRUE created_at='T' retired_at= pool='p' hostname='a' ipaddr='127.0.0.3'\nsession_id=3 active=TRUE created_at='T' retired_at= pool='p' hostname='b' ipaddr='127.0.0.2'"
        );
        assert_eq!(format_flat(&json!({"action": "get", "sessions": []})), "");
        assert_eq!(
            format_flat(&json!({"error": {"detail": "can't reserve"}})),
            "error='can'\"'\"'t reserve'"
        );
    }
}
