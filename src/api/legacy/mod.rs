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

use std::collections::HashMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

mod poolmap;

use poolmap::one_line;
pub use poolmap::Legacy;

use super::auth;
use super::http::{json_response, validation_item, ApiError, Resp};
use super::AppState;
use crate::alloc::{self, Expiry, NodesSpec};
use crate::percent;
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

// ---------------------------------------------------------------------------------------------
// request parsing

/// Query parameters as Starlette reads them: `parse_qsl(keep_blank_values=True)` (`+` is a
/// space, bad `%` escapes kept, invalid UTF-8 replaced), the last of a repeated name wins.
fn query_params(params: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for part in params.unwrap_or("").split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        m.insert(percent::decode_form(k), percent::decode_form(v));
    }
    m
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
    app: &AppState,
    legacy: &'a Legacy,
    params: &'a HashMap<String, String>,
) -> Result<Option<(&'a str, &'a str)>, &'static str> {
    let key = params.get("key").map(String::as_str).unwrap_or("");
    if key.is_empty() {
        return Ok(None);
    }
    match legacy.user(key) {
        Some(name) => Ok(Some((name, key))),
        None => {
            app.auth.failures.inc("wrong_key");
            Err("Forbidden")
        }
    }
}

/// [`credentials`], required.
fn required_credentials<'a>(
    app: &AppState,
    legacy: &'a Legacy,
    params: &'a HashMap<String, String>,
) -> Result<(&'a str, &'a str), &'static str> {
    credentials(app, legacy, params)?.ok_or("Not authenticated")
}

/// v1 authentication of the usermap pair (HTTP Basic `name:key` upstream).
async fn v1_auth(app: &AppState, name: &str, key: &str) -> Result<Tenant, ApiError> {
    auth::verify_pair(&app.db, &app.auth, &app.cfg.defaults, name, key).await
}

async fn node_get(app: &AppState, legacy: &Legacy, params: &HashMap<String, String>) -> Resp {
    let (name, key) = match required_credentials(app, legacy, params) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    let ver = params.get("ver").map(String::as_str).unwrap_or("7");
    let arch = params.get("arch").map(String::as_str).unwrap_or("x86_64");
    let flavor = params.get("flavor").map(String::as_str);
    let count = match params.get("count") {
        None => 1,
        Some(s) => match crate::lax::int_str(s) {
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
    let pool = match legacy.lookup_pool(Some(ver), Some(arch), flavor) {
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
        let tenant = v1_auth(app, name, key).await?;
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
        let s = alloc::create(&app.db, &app.cfg, &tenant, None, &specs).await;
        app.metrics.allocation("legacy", &s, start.elapsed());
        Ok(s?)
    }
    .await;
    match result {
        Ok(s) => json_response(
            StatusCode::OK,
            &json!({
                "ssid": s.row.id,
                "hosts": s.nodes.iter().map(|n| legacy.mangle_hostname(n.hostname.as_deref())).collect::<Vec<_>>(),
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
    app: &AppState,
    legacy: &Legacy,
    params: &HashMap<String, String>,
    retire: bool,
) -> Resp {
    let (name, key) = match required_credentials(app, legacy, params) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    let Some(ssid) = params.get("ssid").filter(|s| !s.is_empty()) else {
        return text(PARAMS_ABSENT);
    };
    // what `PUT /api/v1/sessions/{ssid}` with `{"active": false}` / `{"expires_at": "+6h"}` does
    let result: Result<(), ApiError> = async {
        let tenant = v1_auth(app, name, key).await?;
        let id = crate::lax::int_str(ssid)
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
        alloc::update(&app.db, &app.cfg, &tenant, id, active, expires).await?;
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

async fn inventory(app: &AppState, legacy: &Legacy, params: &HashMap<String, String>) -> Resp {
    let cred = match credentials(app, legacy, params) {
        Ok(c) => c,
        Err(d) => return detail(StatusCode::FORBIDDEN, d),
    };
    match cred {
        Some((name, key)) => {
            // `GET /api/v1/sessions` as the tenant: its active sessions (all of them for admins)
            let result: Result<Vec<alloc::SessionView>, ApiError> = async {
                let tenant = v1_auth(app, name, key).await?;
                Ok(alloc::list(&app.db, &app.cfg, Some(&tenant)).await?)
            }
            .await;
            match result {
                Ok(sessions) => {
                    let rows: Vec<Value> = sessions
                        .iter()
                        .flat_map(|s| {
                            s.nodes.iter().map(move |n| {
                                json!([legacy.mangle_hostname(n.hostname.as_deref()), s.row.id])
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
        None if !app.cfg.app.anonymous_reads => detail(StatusCode::FORBIDDEN, "Not authenticated"),
        None => match alloc::list(&app.db, &app.cfg, None).await {
            // anonymous `GET /api/v1/sessions`: every tenant's active sessions
            Ok(sessions) => {
                let rows: Vec<Value> = sessions
                    .iter()
                    .flat_map(|s| {
                        s.nodes.iter().map(move |n| {
                            json!([
                                n.id,
                                legacy.mangle_hostname(n.hostname.as_deref()),
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
/// Upstream 3.4.0 metaclient's OpenAPI document, as it serves it (compact, key order kept).
const OPENAPI: &str = include_str!("openapi.json").trim_ascii_end();

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

async fn dispatch(
    app: &AppState,
    legacy: &Legacy,
    req: Request<Incoming>,
    index: &mut usize,
) -> Resp {
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
    let params = query_params(req.uri().query());
    match route {
        Route::NodeGet => node_get(app, legacy, &params).await,
        Route::NodeDone => node_update(app, legacy, &params, true).await,
        Route::NodeFail => node_update(app, legacy, &params, false).await,
        Route::Inventory => inventory(app, legacy, &params).await,
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
pub async fn handle(app: Arc<AppState>, legacy: Arc<Legacy>, req: Request<Incoming>) -> Resp {
    let start = std::time::Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut route = R_UNMATCHED;
    let mut resp = dispatch(&app, &legacy, req, &mut route).await;
    tracing::info!(
        "[{request_id}] legacy {method} {path} {}",
        resp.status().as_u16()
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    app.metrics
        .legacy
        .observe(route, &method, resp.status(), start.elapsed());
    resp
}

/// Serve the legacy API on `listener` until `shutdown` (see [`super::serve_with`]).
pub async fn serve(
    listener: TcpListener,
    limits: Arc<super::server::Limits>,
    shutdown: super::server::Shutdown,
    app: Arc<AppState>,
    legacy: Arc<Legacy>,
) {
    super::serve_with(listener, limits, shutdown, move |req| {
        handle(app.clone(), legacy.clone(), req)
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

    #[test]
    fn query_strings_parse_like_starlette() {
        let params = query_params(Some(
            "key=a%2Bb+c&count=1&count=2&flag&=x&bad=%zz%4&u=%C3%A9%ff",
        ));
        assert_eq!(params["key"], "a+b c");
        assert_eq!(params["count"], "2");
        assert_eq!(params["flag"], "");
        assert_eq!(params[""], "x");
        assert_eq!(params["bad"], "%zz%4");
        assert_eq!(params["u"], "é\u{fffd}");
        assert!(query_params(None).is_empty());
    }
}
