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

use crate::config::Config;
use crate::db::Db;
use crate::tenant::Tenant;

/// Everything a request handler needs.
pub struct AppState {
    pub cfg: Config,
    pub db: Db,
    pub auth: AuthCache,
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

async fn dispatch(st: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_string();
    if path.len() > 1 && path.ends_with('/') {
        let target = match path.trim_end_matches('/') {
            "" => "/",
            t => t,
        };
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
            Ok(json_response(StatusCode::OK, &openapi::document()))
        }
        ["docs"] => Ok(openapi::docs_page()),
        ["api", "v1", rest @ ..] => v1::route(st, req, rest).await,
        _ => Err(ApiError::not_found()),
    }
}

/// Handle one request: dispatch, map errors, add `X-Request-Id`, log.
pub async fn handle(st: Arc<AppState>, req: Request<Incoming>) -> Resp {
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = match dispatch(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::info!("[{request_id}] {method} {path} {}", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
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
    st: Arc<AppState>,
) {
    serve_with(listener, limits, shutdown, move |req| {
        handle(st.clone(), req)
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
