//! Small HTTP helpers shared by the v1 and legacy APIs: JSON responses in upstream's shapes,
//! the error type with its status mapping, request body reading with a size limit and a deadline.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::server::BodyDeadline;

/// What a body stream may fail with (a streamed body whose database stream broke: hyper
/// aborts the connection, the client sees a truncated body).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: whole ([`full`]) or streamed (`GET /api/v1/nodes`).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
pub type Resp = Response<Body>;

/// `200 {"action": action, key: [item, …]}` with the items streamed from `items` in chunks of
/// about 64 KB, so that a list is never whole in memory (the bytes are those of
/// [`json_response`] for the same list). `hold` (a database connection, a permit) lives until
/// the body ends. An error from `items` aborts the body (logged with its cause): the client
/// sees a truncated response, never a well-formed partial list.
pub fn streamed_list<S, T, E, H>(
    action: &str,
    key: &str,
    items: S,
    hold: H,
    to_json: fn(&T) -> Value,
) -> Resp
where
    S: futures_util::Stream<Item = Result<T, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
    T: Send + 'static,
    H: Send + 'static,
{
    use futures_util::StreamExt;
    const CHUNK: usize = 64 * 1024;
    let head = format!(
        "{{\"action\":{},{}:[",
        serde_json::to_string(action).expect("json"),
        serde_json::to_string(key).expect("json")
    );
    struct St<S, H> {
        items: S,
        _hold: H,
        buf: Vec<u8>,
        first: bool,
        done: bool,
    }
    let st = St {
        items,
        _hold: hold,
        buf: head.into_bytes(),
        first: true,
        done: false,
    };
    let chunks = futures_util::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        while st.buf.len() < CHUNK {
            match st.items.next().await {
                Some(Ok(item)) => {
                    if !st.first {
                        st.buf.push(b',');
                    }
                    st.first = false;
                    serde_json::to_writer(&mut st.buf, &to_json(&item)).expect("json");
                }
                Some(Err(e)) => {
                    tracing::error!("streaming a list failed, response aborted: {e}");
                    st.done = true;
                    let err: BoxError = e.to_string().into();
                    return Some((Err(err), st));
                }
                None => {
                    st.buf.extend_from_slice(b"]}");
                    st.done = true;
                    break;
                }
            }
        }
        let out = Bytes::from(std::mem::take(&mut st.buf));
        Some((Ok(hyper::body::Frame::data(out)), st))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync()
}

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(full(serde_json::to_vec(body).expect("json")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 405 `{"detail":"Method Not Allowed"}` with an `Allow` header listing the path's methods.
pub fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"detail": "Method Not Allowed"}),
    );
    r.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Starlette's `redirect_slashes` answer: 307 to `path` (and `?query`), an absolute URL on
/// `host` when given (the legacy API, like Starlette), else a path. `None` when `path` is not
/// a path of this server as a browser reads a `Location`: `//evil.example` and `/\evil.example`
/// (the WHATWG URL parser reads `\` as `/`) name another host — an open redirect; the caller
/// answers such a path like any unknown one (404).
pub fn slash_redirect(path: &str, query: Option<&str>, host: Option<&str>) -> Option<Resp> {
    if !path.starts_with('/') || matches!(path.as_bytes().get(1), Some(b'/' | b'\\')) {
        return None;
    }
    let mut target = match host {
        Some(host) => format!("http://{host}{path}"),
        None => path.to_string(),
    };
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    let location = HeaderValue::from_str(&target).ok()?;
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    r.headers_mut().insert(hyper::header::LOCATION, location);
    Some(r)
}

/// One FastAPI-style validation error item.
pub fn validation_item(kind: &str, loc: Value, msg: &str, input: Value) -> Value {
    json!({"type": kind, "loc": loc, "msg": msg, "input": input})
}

/// Errors an endpoint returns; each maps to upstream's status and body.
#[derive(Debug)]
pub enum ApiError {
    /// `{"detail": "..."}` with this status
    Detail(StatusCode, String),
    /// 401 with `WWW-Authenticate: Basic realm="duffy"`
    Unauthenticated(&'static str),
    /// 422 with a list of validation items
    Validation(Vec<Value>),
    /// 503 with `Retry-After: 0`
    Unavailable(String),
    /// 429 with `Retry-After: <seconds>`: too many wrong keys from this client (`api::auth`)
    TooManyRequests(u64),
    /// 500; the cause is logged, not shown
    Internal(String),
}

impl ApiError {
    pub fn not_found() -> Self {
        ApiError::Detail(StatusCode::NOT_FOUND, "Not Found".into())
    }
    pub fn forbidden() -> Self {
        ApiError::Detail(StatusCode::FORBIDDEN, "Forbidden".into())
    }
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        ApiError::Detail(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
    }
    pub fn into_response(self) -> Resp {
        match self {
            ApiError::Detail(s, d) => {
                let mut r = json_response(s, &json!({"detail": d}));
                if matches!(
                    s,
                    StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
                ) {
                    // the rest of the body is not read: the connection cannot carry another request
                    r.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
            ApiError::Unauthenticated(d) => {
                let mut r = json_response(StatusCode::UNAUTHORIZED, &json!({"detail": d}));
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"duffy\""),
                );
                r
            }
            ApiError::Validation(items) => {
                json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({"detail": items}))
            }
            ApiError::Unavailable(d) => {
                let mut r = json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"detail": d}));
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from_static("0"));
                r
            }
            ApiError::TooManyRequests(secs) => {
                let mut r = json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &json!({"detail": "Too many failed authentication attempts"}),
                );
                r.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs.max(1)));
                r
            }
            ApiError::Internal(cause) => {
                tracing::error!("internal error: {cause}");
                let mut r = Response::new(full(Bytes::from_static(b"Internal Server Error")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        // the cause for the log: SQLSTATE and message, or the client-side error's sources
        ApiError::Internal(crate::db::error_chain(&e))
    }
}

/// Does this `Content-Type` announce JSON, as FastAPI decides: `application/json` or
/// `application/<anything>+json`, in any case, parameters (`; charset=utf-8`) ignored.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(Ok(v)) = content_type.map(HeaderValue::to_str) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some(("application", sub)) => sub == "json" || sub.ends_with("+json"),
        _ => false,
    }
}

/// PostgreSQL stores the NUL character in neither `text` nor `jsonb`: no string of a request
/// may hold one. Checked where requests are parsed: JSON bodies ([`reject_nul`]), HTTP Basic
/// credentials, the body the legacy API hands to the v1 logic.
pub fn holds_nul(s: &str) -> bool {
    s.contains('\0')
}

/// 422 naming every place in the JSON body `v` (object keys included) where a string holds
/// the NUL character ([`holds_nul`]): `loc` `["body", "nodes_specs", 0, "pool"]`, type
/// `value_error` as a Pydantic validator would report it.
pub fn reject_nul(v: &Value) -> Result<(), ApiError> {
    fn found(loc: &[Value], s: &str, items: &mut Vec<Value>) {
        items.push(validation_item(
            "value_error",
            Value::Array(loc.to_vec()),
            "Value error, must not contain the NUL character (\\u0000)",
            json!(s),
        ))
    }
    fn walk(v: &Value, loc: &mut Vec<Value>, items: &mut Vec<Value>) {
        match v {
            Value::String(s) if holds_nul(s) => found(loc, s, items),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    loc.push(json!(i));
                    walk(x, loc, items);
                    loc.pop();
                }
            }
            Value::Object(o) => {
                for (k, x) in o {
                    loc.push(json!(k));
                    if holds_nul(k) {
                        found(loc, k, items);
                    }
                    walk(x, loc, items);
                    loc.pop();
                }
            }
            _ => {}
        }
    }
    let mut items = Vec::new();
    walk(v, &mut vec![json!("body")], &mut items);
    if items.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(items))
    }
}

/// Read a request body the way FastAPI reads a body model, for every endpoint that takes one:
/// * no body → 422 `missing`;
/// * a body whose `Content-Type` is not JSON ([`is_json`]) — `text/plain` and forms, which a
///   browser sends cross-site without a CORS preflight, or no `Content-Type` at all — is not
///   parsed: FastAPI's 422 for a body that is not an object, with the body's text as `input`.
///   (Upstream 3.4.0's FastAPI 0.115 still parses a body without `Content-Type`; FastAPI 0.132
///   stopped, for the same cross-site reason, and so does duffy.)
/// * malformed JSON → 422 `json_invalid`;
/// * a string holding NUL → 422 ([`reject_nul`]);
/// * a body announced (`Content-Length`) or found larger than [`MAX_BODY`] → 413 at once;
/// * a body not in by the request's [`BodyDeadline`] (`app.body-read-timeout`) → 408; both
///   close the connection.
pub async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let json = is_json(req.headers().get(CONTENT_TYPE));
    let too_large = || {
        ApiError::Detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large".into(),
        )
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let deadline = req.extensions().get::<BodyDeadline>().map(|d| d.0);
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let collected = match deadline {
        Some(d) => tokio::time::timeout_at(d, collect).await.map_err(|_| {
            ApiError::Detail(
                StatusCode::REQUEST_TIMEOUT,
                "Request body not received in time".into(),
            )
        })?,
        None => collect.await,
    };
    let body = collected.map_err(|_| too_large())?.to_bytes();
    if body.is_empty() {
        // FastAPI: a required body that was not sent
        return Err(ApiError::Validation(vec![validation_item(
            "missing",
            json!(["body"]),
            "Field required",
            Value::Null,
        )]));
    }
    if !json {
        return Err(not_an_object(json!(String::from_utf8_lossy(&body))));
    }
    let v = serde_json::from_slice(&body).map_err(|e| {
        ApiError::Validation(vec![json!({
            "type": "json_invalid",
            "loc": ["body", e.column()],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": e.to_string()},
        })])
    })?;
    reject_nul(&v)?;
    Ok(v)
}

/// FastAPI's 422 for a body that is not a JSON object (or was not parsed as JSON at all).
pub fn not_an_object(input: Value) -> ApiError {
    ApiError::Validation(vec![validation_item(
        "model_attributes_type",
        json!(["body"]),
        "Input should be a valid dictionary or object to extract fields from",
        input,
    )])
}

/// Parse an integer path parameter (leniently, like Pydantic); not an integer → 422
/// `int_parsing` at `["path", name]`. An integer outside the `integer` column range names no
/// row: 404.
pub fn path_int(s: &str, name: &str) -> Result<i32, ApiError> {
    let raw = json!(s);
    match super::lax::lax_int(&raw) {
        Ok(n) => i32::try_from(n).map_err(|_| ApiError::not_found()),
        Err((kind, msg)) => Err(ApiError::Validation(vec![validation_item(
            kind,
            json!(["path", name]),
            msg,
            raw,
        )])),
    }
}
