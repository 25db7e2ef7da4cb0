//! The library half of `duffy client`: a small HTTP client for the REST API v1 (hyper 1 +
//! hyper-util's legacy client; `https://` through rustls with the system's CA certificates, or
//! the Mozilla roots when the system has none). Its results are printed by
//! [`crate::output::client`] in upstream's three formats.
//!
//! Like upstream's `DuffyClient._query_method`, a response with an unexpected status whose body
//! is a JSON object with a string `detail` is a *result* (`{"error": {"detail": …}}`), anything
//! else is a [`ClientError`]. The API key only ever goes into the `Authorization` header: it is
//! never part of an error, a log line or a displayed URL.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

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
}
