//! The HTTP server (`duffy serve`): a minimal hyper 1.x service with upstream's REST API v1
//! (`/api/v1/…`), its OpenAPI document, and the legacy cico API on a second listener.
//!
//! This module knows HTTP; the domain lives in `alloc` and `tenant`, SQL in `db`. No state that
//! two server processes could disagree on is kept here (the auth cache only remembers verified
//! keys, keyed by their stored hash, and this process's own failure counts).

mod auth;
mod body;
pub mod coalesce;
pub mod http;
mod lax;
pub mod legacy;
pub mod openapi;
pub mod server;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Request, StatusCode};
use tokio::net::TcpListener;

pub use auth::AuthCache;
use http::{json_response, ApiError, Resp};

use crate::config::{Config, MetricsAccess};
use crate::db::Db;
use crate::metrics::{self, DbGauges, Exposition, Histogram, RequestMetrics};
use crate::tenant::Tenant;

/// Route templates of the v1 listener (the `route` label of its request metrics); the
/// constants below are their indexes.
pub const ROUTES: &[&str] = &[
    "/api/v1/pools",
    "/api/v1/pools/{name}",
    "/api/v1/sessions",
    "/api/v1/sessions/{id}",
    "/api/v1/nodes",
    "/api/v1/nodes/{id}",
    "/api/v1/tenants",
    "/api/v1/tenants/{id}",
    "/openapi.json",
    "/api/v1/openapi.json",
    "/docs",
    "/metrics",
    "(redirect)",
    "(unmatched)",
];
const R_OPENAPI: usize = 8;
const R_V1_OPENAPI: usize = 9;
const R_DOCS: usize = 10;
const R_METRICS: usize = 11;
const R_REDIRECT: usize = 12;
const R_UNMATCHED: usize = 13;

/// What `duffy serve` counts itself (the rest of `/metrics` is read at scrape time).
pub struct ApiMetrics {
    /// requests of the v1 listener ([`ROUTES`])
    pub v1: RequestMetrics,
    /// requests of the legacy listener (`legacy::ROUTES`)
    pub legacy: RequestMetrics,
    /// session allocation latency by API (v1, legacy) and outcome ([`ALLOCATION_OUTCOMES`])
    allocation: Vec<Histogram>,
    /// the database-derived gauges, cached between scrapes
    pub db: DbGauges,
}

/// `outcome` of `duffy_session_allocation_duration_seconds`: the session was `created`, the
/// request `refused` (quota, unknown pool, not enough ready nodes, …) or it `failed` (SSH
/// contextualization, database).
pub const ALLOCATION_OUTCOMES: [&str; 3] = ["created", "refused", "failed"];
const ALLOCATION_APIS: [&str; 2] = ["v1", "legacy"];

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            v1: RequestMetrics::new("v1", ROUTES),
            legacy: RequestMetrics::new("legacy", legacy::ROUTES),
            allocation: (0..ALLOCATION_APIS.len() * ALLOCATION_OUTCOMES.len())
                .map(|_| Histogram::new(metrics::ALLOCATION_BUCKETS))
                .collect(),
            db: DbGauges::default(),
        }
    }
}

impl ApiMetrics {
    /// Count one allocation (`alloc::create*`) of `api` that took `elapsed`.
    pub fn allocation<T>(
        &self,
        api: &str,
        r: &Result<T, crate::alloc::SessionError>,
        elapsed: std::time::Duration,
    ) {
        use crate::alloc::SessionError as E;
        let outcome = match r {
            Ok(_) => 0,
            Err(E::Contextualization | E::Decontextualization | E::Db(_)) => 2,
            Err(_) => 1,
        };
        let a = ALLOCATION_APIS.iter().position(|x| *x == api).unwrap_or(0);
        self.allocation[a * ALLOCATION_OUTCOMES.len() + outcome].observe(elapsed);
    }

    /// The text of `GET /metrics`.
    pub async fn render(&self, app: &AppState) -> String {
        let mut out = Exposition::new();
        metrics::render_requests(&mut out, &[&self.v1, &self.legacy]);
        out.family(
            "duffy_session_allocation_duration_seconds",
            "histogram",
            "Time to allocate a session (nodes chosen, contextualized, deployed), by API and outcome.",
        );
        for (i, h) in self.allocation.iter().enumerate() {
            let api = ALLOCATION_APIS[i / ALLOCATION_OUTCOMES.len()];
            let outcome = ALLOCATION_OUTCOMES[i % ALLOCATION_OUTCOMES.len()];
            out.histogram(
                "duffy_session_allocation_duration_seconds",
                &[("api", api), ("outcome", outcome)],
                h,
            );
        }
        out.family(
            "duffy_auth_failures_total",
            "counter",
            "Refused credentials (v1 Basic auth and legacy keys), by reason.",
        );
        app.auth
            .failures
            .render(&mut out, "duffy_auth_failures_total", "reason");
        metrics::render_common(&mut out, &app.cfg, &app.db, &self.db).await;
        out.finish()
    }
}

/// Everything a request handler needs.
pub struct AppState {
    pub cfg: Config,
    pub db: Db,
    pub auth: AuthCache,
    /// what this process counts for `GET /metrics`
    pub metrics: ApiMetrics,
    /// in-flight per-pool level queries, shared by concurrent requests
    pub levels: coalesce::Coalescer<Vec<(crate::state::NodeState, i64)>>,
    /// turns for the heavy reads (`GET /api/v1/nodes`: every node), [`HEAVY_READS`] at once
    pub heavy_reads: Arc<tokio::sync::Semaphore>,
}

/// Heavy reads served at once; more wait for a turn (each one streams, so this bounds the
/// database work and the buffers, not the answer's size).
pub const HEAVY_READS: usize = 2;

impl AppState {
    pub fn new(cfg: Config, db: Db) -> AppState {
        AppState {
            auth: AuthCache::new(&cfg.app.auth),
            metrics: ApiMetrics::default(),
            cfg,
            db,
            levels: coalesce::Coalescer::default(),
            heavy_reads: Arc::new(tokio::sync::Semaphore::new(HEAVY_READS)),
        }
    }

    /// Authenticate; anonymous allowed unless `required`.
    pub async fn auth(&self, h: &HeaderMap, required: bool) -> Result<Option<Tenant>, ApiError> {
        auth::authenticate(&self.db, &self.auth, &self.cfg.defaults, h, required).await
    }

    pub async fn auth_required(&self, h: &HeaderMap) -> Result<Tenant, ApiError> {
        self.auth(h, true)
            .await?
            .ok_or(ApiError::Unauthenticated("Not authenticated"))
    }
}

/// Route the request; `route` is set to its template's index in [`ROUTES`] (for the metrics).
async fn dispatch(
    app: &AppState,
    req: Request<Incoming>,
    route: &mut usize,
) -> Result<Resp, ApiError> {
    *route = R_UNMATCHED;
    let path = req.uri().path().to_string();
    if path.len() > 1 && path.ends_with('/') {
        let target = match path.trim_end_matches('/') {
            "" => "/",
            t => t,
        };
        *route = R_REDIRECT;
        return http::slash_redirect(target, req.uri().query(), None)
            .ok_or_else(ApiError::not_found);
    }
    // decode like Starlette does before routing (`/pools/pool%20a` names `pool a`)
    let decoded: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(crate::percent::decode)
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["openapi.json"] | ["api", "v1", "openapi.json"] => {
            *route = if segs.len() == 1 {
                R_OPENAPI
            } else {
                R_V1_OPENAPI
            };
            Ok(json_response(StatusCode::OK, &openapi::document()))
        }
        ["docs"] => {
            *route = R_DOCS;
            Ok(openapi::docs_page())
        }
        ["metrics"] if app.cfg.app.metrics != MetricsAccess::Off => {
            *route = R_METRICS;
            serve_metrics(app, &req).await
        }
        ["api", "v1", rest @ ..] => {
            if let Some(r) = v1::template(rest) {
                *route = r;
            }
            v1::route(app, req, rest).await
        }
        _ => Err(ApiError::not_found()),
    }
}

/// `GET /metrics` (Prometheus text format), as `app.metrics` allows.
async fn serve_metrics(app: &AppState, req: &Request<Incoming>) -> Result<Resp, ApiError> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(http::method_not_allowed("GET"));
    }
    if app.cfg.app.metrics == MetricsAccess::Admin {
        let caller = app.auth_required(req.headers()).await?;
        if !caller.row.is_admin {
            return Err(ApiError::forbidden());
        }
    }
    Ok(metrics_response(app.metrics.render(app).await))
}

/// A 200 with exposition text.
pub fn metrics_response(text: String) -> Resp {
    let mut r = hyper::Response::new(http::full(bytes::Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}

/// Handle one request: dispatch, map errors, add `X-Request-Id`, log, count.
pub async fn handle(app: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let start = std::time::Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut route = R_UNMATCHED;
    let mut resp = match dispatch(&app, req, &mut route).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::info!("[{request_id}] {method} {path} {}", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    app.metrics
        .v1
        .observe(route, &method, resp.status(), start.elapsed());
    resp
}

/// Serve HTTP/1.1 on `listener` with `handler` until `shutdown` turns true (the connection cap,
/// timeouts and accept loop are [`server`]'s); then stop accepting, let in-flight requests
/// finish, close idle keep-alives and return once every connection is closed.
pub async fn serve_with<F, Fut>(
    listener: TcpListener,
    limits: Arc<server::Limits>,
    shutdown: server::Shutdown,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    server::serve(listener, limits, shutdown, handler).await
}

/// Serve the v1 API on `listener` (see [`serve_with`]).
pub async fn serve_v1(
    listener: TcpListener,
    limits: Arc<server::Limits>,
    shutdown: server::Shutdown,
    app: Arc<AppState>,
) {
    serve_with(listener, limits, shutdown, move |req| {
        handle(app.clone(), req)
    })
    .await
}

/// Bind `host:port` with a clear error.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let mut last = None;
    for a in addr {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{host}: no address"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_route_templates_name_the_paths_they_match() {
        for (rest, want) in [
            (&["pools"][..], "/api/v1/pools"),
            (&["pools", "a b"], "/api/v1/pools/{name}"),
            (&["sessions"], "/api/v1/sessions"),
            (&["sessions", "7"], "/api/v1/sessions/{id}"),
            (&["nodes"], "/api/v1/nodes"),
            (&["nodes", "7"], "/api/v1/nodes/{id}"),
            (&["tenants"], "/api/v1/tenants"),
            (&["tenants", "7"], "/api/v1/tenants/{id}"),
        ] {
            assert_eq!(ROUTES[v1::template(rest).unwrap()], want);
        }
        assert_eq!(v1::template(&["pools", "a", "b"]), None);
        assert_eq!(ROUTES[R_UNMATCHED], "(unmatched)");
        assert_eq!(ROUTES[R_METRICS], "/metrics");
    }
}
