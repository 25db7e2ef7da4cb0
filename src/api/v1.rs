//! `/api/v1` endpoints (compat spec §4): pools, sessions, nodes, tenants — upstream's paths,
//! permissions, status codes and bodies, on top of `alloc` and `tenant`.

use std::net::IpAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::body::Body;
use super::http::{
    json_response, method_not_allowed, path_int, read_json, streamed_list, ApiError, Resp,
};
use super::lax::lax_int;
use super::AppState;
use crate::alloc::{self, Expiry, NodesSpec, SessionError};
use crate::db::nodes::{self, NewNode};
use crate::duration::{parse_config_duration, parse_relative_duration};
use crate::state::{Actor, NodeState};
use crate::tenant::{self, ApiKeyChange, NewTenant, Tenant, TenantChanges, TenantError, MASK};

type Reply = Result<Resp, ApiError>;

/// Largest `quantity` / `node_quota` accepted (PostgreSQL `integer`; documented in OpenAPI).
const MAX_INT: i64 = i32::MAX as i64;

fn ok(action: &str, key: &str, v: Value) -> Resp {
    json_response(StatusCode::OK, &json!({"action": action, key: v}))
}

fn created(key: &str, v: Value) -> Resp {
    json_response(StatusCode::CREATED, &json!({"action": "post", key: v}))
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound => ApiError::not_found(),
            SessionError::Forbidden(d) => ApiError::Detail(StatusCode::FORBIDDEN, d),
            e @ SessionError::Quota { .. } => {
                ApiError::Detail(StatusCode::FORBIDDEN, e.to_string())
            }
            SessionError::Unprocessable(d) => ApiError::unprocessable(d),
            e @ (SessionError::Contextualization | SessionError::Decontextualization) => {
                ApiError::Unavailable(e.to_string())
            }
            SessionError::Db(e) => e.into(),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::NotFound(_) => ApiError::not_found(),
            TenantError::Exists(n) => {
                ApiError::Detail(StatusCode::CONFLICT, format!("tenant {n:?} already exists"))
            }
            e @ TenantError::Retired { .. } => ApiError::unprocessable(e.to_string()),
            e @ (TenantError::SshKey(_) | TenantError::Invalid { .. }) => {
                ApiError::unprocessable(e.to_string())
            }
            TenantError::Db(e) => e.into(),
        }
    }
}

/// The index in [`super::ROUTES`] of the template `/api/v1/<rest>` matches, whatever the
/// method (405s count under their route); `None`: no route.
pub fn template(rest: &[&str]) -> Option<usize> {
    Some(match rest {
        ["pools"] => 0,
        ["pools", _] => 1,
        ["sessions"] => 2,
        ["sessions", _] => 3,
        ["nodes"] => 4,
        ["nodes", _] => 5,
        ["tenants"] => 6,
        ["tenants", _] => 7,
        _ => return None,
    })
}

/// Dispatch `/api/v1/<rest>`.
pub async fn route(app: &AppState, req: Request<Incoming>, rest: &[&str]) -> Reply {
    let m = req.method().clone();
    match (rest, &m) {
        (["pools"], &Method::GET) => {
            check_reader(app, req.headers()).await?;
            get_pools(app)
        }
        (["pools", name], &Method::GET) => {
            check_reader(app, req.headers()).await?;
            get_pool(app, name).await
        }
        (["sessions"], &Method::GET) => {
            let caller = app
                .auth(req.headers(), !app.cfg.app.anonymous_reads)
                .await?;
            let list = alloc::list(&app.db, &app.cfg, caller.as_ref()).await?;
            Ok(ok(
                "get",
                "sessions",
                Value::Array(list.iter().map(|s| s.to_json()).collect()),
            ))
        }
        (["sessions"], &Method::POST) => create_session(app, req).await,
        (["sessions", id], &Method::GET) => {
            let caller = app.auth_required(req.headers()).await?;
            let id = path_int(id, "id")?;
            Ok(ok(
                "get",
                "session",
                alloc::get(&app.db, &app.cfg, &caller, id).await?.to_json(),
            ))
        }
        (["sessions", id], &Method::PUT) => update_session(app, req, id).await,
        (["nodes"], &Method::GET) => {
            check_reader(app, req.headers()).await?;
            // every node: streamed in constant memory, at most `HEAVY_READS` at once (the
            // rest wait for a turn instead of each holding the whole list)
            let turn = app
                .heavy_reads
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let c = app.db.get().await?;
            let rows = Box::pin(nodes::stream_active(&**c).await?);
            Ok(streamed_list("get", "nodes", rows, (c, turn), node_model))
        }
        (["nodes"], &Method::POST) => create_node(app, req).await,
        (["nodes", id], &Method::GET) => {
            app.auth_required(req.headers()).await?;
            let id = path_int(id, "id")?;
            let c = app.db.get().await?;
            let n = nodes::get(&**c, id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            Ok(ok("get", "node", node_model(&n)))
        }
        (["tenants"], &Method::GET) => {
            let caller = app.auth_required(req.headers()).await?;
            let list = if caller.row.is_admin {
                tenant::list(&app.db, &app.cfg.defaults, true).await?
            } else {
                vec![caller]
            };
            Ok(ok(
                "get",
                "tenants",
                Value::Array(list.iter().map(|t| t.to_json(false, None)).collect()),
            ))
        }
        (["tenants"], &Method::POST) => create_tenant(app, req).await,
        (["tenants", id], &Method::GET) => {
            let caller = app.auth_required(req.headers()).await?;
            let id = path_int(id, "id")?;
            let t = tenant::get_by_id(&app.db, &app.cfg.defaults, id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            if !caller.row.is_admin && caller.row.id != t.row.id {
                return Err(ApiError::forbidden());
            }
            Ok(ok("get", "tenant", t.to_json(false, None)))
        }
        (["tenants", id], &Method::PUT) => update_tenant(app, req, id).await,
        (["pools"] | ["pools", _] | ["nodes", _], _) => Ok(method_not_allowed("GET")),
        (["sessions"] | ["nodes"] | ["tenants"], _) => Ok(method_not_allowed("GET, POST")),
        (["sessions", _] | ["tenants", _], _) => Ok(method_not_allowed("GET, PUT")),
        _ => Err(ApiError::not_found()),
    }
}

/// The reads upstream answers anonymously (`GET /pools`, `/pools/{name}`, `/nodes`; `/sessions`
/// authenticates optionally): with `app.anonymous-reads: false` they need a tenant — 401 `Not
/// authenticated` without credentials, as upstream's required-auth endpoints. With the default
/// (`true`) credentials are not even looked at, as upstream.
async fn check_reader(app: &AppState, h: &hyper::HeaderMap) -> Result<(), ApiError> {
    if !app.cfg.app.anonymous_reads {
        app.auth_required(h).await?;
    }
    Ok(())
}

fn node_model(n: &nodes::Node) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "retired_at".into(),
        json!(n.retired_at.as_ref().map(crate::timefmt::iso_z)),
    );
    m.insert("active".into(), json!(n.retired_at.is_none()));
    m.insert(
        "created_at".into(),
        json!(crate::timefmt::iso_z(&n.created_at)),
    );
    m.extend(alloc::node_json(n, Some(n.state)));
    Value::Object(m)
}

fn get_pools(app: &AppState) -> Reply {
    let pools: Vec<Value> = app
        .cfg
        .concrete_pools()
        .filter_map(|p| {
            p.fill_level
                .map(|f| json!({"name": p.name, "fill-level": f}))
        })
        .collect();
    Ok(ok("get", "pools", Value::Array(pools)))
}

async fn get_pool(app: &AppState, name: &str) -> Reply {
    let pool = app.cfg.pool(name).ok_or_else(ApiError::not_found)?;
    let Some(fill) = pool.fill_level else {
        return Err(ApiError::unprocessable("Unprocessable Entity"));
    };
    let counts = app
        .levels
        .run(name, || async {
            let c = app.db.get().await.map_err(|e| e.to_string())?;
            nodes::pool_levels(&**c, name)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(ApiError::Internal)?;
    let mut levels = serde_json::Map::new();
    for s in NodeState::LEVELS {
        let n = counts
            .iter()
            .find(|(app, _)| *app == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        levels.insert(s.as_str().into(), json!(n));
    }
    Ok(ok(
        "get",
        "pool",
        json!({"name": name, "fill-level": fill, "levels": levels}),
    ))
}

/// The `Idempotency-Key` header of `POST /sessions` (1 to 255 printable ASCII characters).
fn idempotency_key(h: &hyper::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 255 || !b.iter().all(|c| (0x20..0x7f).contains(c)) {
        return Err(ApiError::unprocessable(
            "Idempotency-Key: expected 1 to 255 printable ASCII characters".to_string(),
        ));
    }
    Ok(Some(String::from_utf8_lossy(b).into_owned()))
}

async fn create_session(app: &AppState, req: Request<Incoming>) -> Reply {
    let caller = app.auth_required(req.headers()).await?;
    let idem = idempotency_key(req.headers())?;
    let v = read_json(req).await?;
    let mut b = Body::new(&v)?;
    let tenant_id = b.int("tenant_id");
    let mut specs = Vec::new();
    match b.get("nodes_specs") {
        None => b.missing("nodes_specs"),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Object(o) = item else {
                    b.err(
                        "model_type",
                        &[json!("nodes_specs"), json!(i)],
                        "Input should be a valid dictionary or instance of NodesSpec",
                        item.clone(),
                    );
                    continue;
                };
                let pool = match o.get("pool") {
                    Some(Value::String(s)) => Some(s.clone()),
                    None | Some(Value::Null) => {
                        b.err(
                            "missing",
                            &[json!("nodes_specs"), json!(i), json!("pool")],
                            "Field required",
                            item.clone(),
                        );
                        None
                    }
                    Some(other) => {
                        b.err(
                            "string_type",
                            &[json!("nodes_specs"), json!(i), json!("pool")],
                            "Input should be a valid string",
                            other.clone(),
                        );
                        None
                    }
                };
                let quantity = match o.get("quantity") {
                    None | Some(Value::Null) => {
                        b.err(
                            "missing",
                            &[json!("nodes_specs"), json!(i), json!("quantity")],
                            "Field required",
                            item.clone(),
                        );
                        None
                    }
                    Some(q) => match lax_int(q) {
                        Ok(n) if n < 1 => {
                            b.errors.push(json!({"type": "greater_than_equal", "loc": ["body", "nodes_specs", i, "quantity"],
                                "msg": "Input should be greater than or equal to 1", "input": q, "ctx": {"ge": 1}}));
                            None
                        }
                        Ok(n) if n > MAX_INT => {
                            b.errors.push(json!({"type": "less_than_equal", "loc": ["body", "nodes_specs", i, "quantity"],
                                "msg": format!("Input should be less than or equal to {MAX_INT}"), "input": q, "ctx": {"le": MAX_INT}}));
                            None
                        }
                        Ok(n) => Some(n),
                        Err((kind, msg)) => {
                            b.err(
                                kind,
                                &[json!("nodes_specs"), json!(i), json!("quantity")],
                                msg,
                                q.clone(),
                            );
                            None
                        }
                    },
                };
                if let (Some(pool), Some(quantity)) = (pool, quantity) {
                    specs.push(NodesSpec { pool, quantity });
                }
            }
        }
        Some(other) => b.err(
            "list_type",
            &[json!("nodes_specs")],
            "Input should be a valid list",
            other.clone(),
        ),
    }
    b.finish()?;
    let tenant_id = match tenant_id.map(|id| (id, i32::try_from(id))) {
        None => None,
        Some((_, Ok(id))) => Some(id),
        // an id no tenant can have: what upstream answers for any absent / other tenant
        Some((id, Err(_))) if caller.row.is_admin => {
            return Err(ApiError::unprocessable(format!(
                "can't find tenant with id {id}"
            )))
        }
        Some((_, Err(_))) => {
            return Err(ApiError::Detail(
                StatusCode::FORBIDDEN,
                "can't create session for other tenant".into(),
            ))
        }
    };
    let start = std::time::Instant::now();
    let s = alloc::create_idempotent(
        &app.db,
        &app.cfg,
        &caller,
        tenant_id,
        &specs,
        idem.as_deref(),
    )
    .await;
    app.metrics.allocation("v1", &s, start.elapsed());
    let s = s?;
    Ok(created("session", s.to_json()))
}

/// Parse `expires_at`: `+3h`/`-20m` relative, ISO 8601 (offset dropped), or a Unix timestamp.
pub fn parse_expiry(v: &Value) -> Option<Expiry> {
    match v {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with('+') || t.starts_with('-') {
                return parse_relative_duration(t).ok().map(Expiry::Relative);
            }
            parse_iso_naive(t).map(Expiry::Absolute)
        }
        Value::Number(n) => {
            let secs = n.as_f64()?;
            chrono::DateTime::from_timestamp(secs.trunc() as i64, ((secs.fract()) * 1e9) as u32)
                .map(|d| Expiry::Absolute(d.naive_utc()))
        }
        _ => None,
    }
}

fn parse_iso_naive(s: &str) -> Option<chrono::NaiveDateTime> {
    // the date/time separator may be `T`, `t`, `_` or a space (Pydantic)
    let normalized;
    let s = match s.as_bytes().get(10) {
        Some(b't' | b'_' | b' ') if s.is_char_boundary(10) && s.is_char_boundary(11) => {
            normalized = format!("{}T{}", &s[..10], &s[11..]);
            normalized.as_str()
        }
        _ => s,
    };
    // drop a trailing `Z` or `±HH:MM` offset: upstream keeps the wall-clock time as UTC
    let mut t = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    if t.len() > 6 {
        let (head, tail) = t.split_at(t.len() - 6);
        if (tail.starts_with('+') || tail.starts_with('-'))
            && tail.as_bytes()[3] == b':'
            && head.contains('T')
        {
            t = head;
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, fmt) {
            return Some(d);
        }
    }
    chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

async fn update_session(app: &AppState, req: Request<Incoming>, id: &str) -> Reply {
    let caller = app.auth_required(req.headers()).await?;
    let id = path_int(id, "id")?;
    let v = read_json(req).await?;
    let mut b = Body::new(&v)?;
    let active = b.boolean("active");
    let expires = match b.get("expires_at") {
        None => None,
        Some(x) => match parse_expiry(x) {
            Some(e) => Some(e),
            None => {
                b.err(
                    "value_error",
                    &[json!("expires_at")],
                    "Value error, invalid timedelta format",
                    x.clone(),
                );
                None
            }
        },
    };
    b.finish()?;
    let s = alloc::update(&app.db, &app.cfg, &caller, id, active, expires).await?;
    Ok(ok("put", "session", s.to_json()))
}

async fn create_node(app: &AppState, req: Request<Incoming>) -> Reply {
    let caller = app.auth_required(req.headers()).await?;
    if !caller.row.is_admin {
        return Err(ApiError::forbidden());
    }
    let v = read_json(req).await?;
    let mut b = Body::new(&v)?;
    let hostname = b.string("hostname", true);
    let ipaddr = match b.get("ipaddr") {
        None => {
            b.missing("ipaddr");
            None
        }
        Some(Value::String(s)) => match s.trim().parse::<IpAddr>() {
            Ok(ip) => Some(ip.to_string()),
            Err(_) => {
                b.err(
                    "ip_any_address",
                    &[json!("ipaddr")],
                    "value is not a valid IPv4 or IPv6 address",
                    json!(s),
                );
                None
            }
        },
        Some(other) => {
            b.err(
                "ip_any_address",
                &[json!("ipaddr")],
                "value is not a valid IPv4 or IPv6 address",
                other.clone(),
            );
            None
        }
    };
    let comment = b.string("comment", false);
    let pool = b.string("pool", false);
    // `reusable` and `data` have defaults but are not nullable (upstream's NodeCreateModel)
    if b.obj.get("reusable") == Some(&Value::Null) {
        b.err(
            "bool_type",
            &[json!("reusable")],
            "Input should be a valid boolean",
            Value::Null,
        );
    }
    let reusable = b.boolean("reusable").unwrap_or(true);
    let data = match b.obj.get("data") {
        None => json!({}),
        Some(d @ Value::Object(_)) => d.clone(),
        Some(other) => {
            b.err(
                "dict_type",
                &[json!("data")],
                "Input should be a valid dictionary",
                other.clone(),
            );
            json!({})
        }
    };
    b.finish()?;
    let mut conn = app.db.get().await?;
    let tx = conn.transaction().await.map_err(crate::db::DbError::from)?;
    let n = match nodes::insert(
        &*tx,
        &NewNode {
            hostname,
            ipaddr,
            pool,
            reusable,
            comment,
            data: Some(data),
        },
        NodeState::Unused,
        Actor::Operator,
        &format!("created via API by {}", caller.row.name),
    )
    .await
    {
        Ok(n) => n,
        Err(e) if e.unique_violation().is_some() => {
            return Err(ApiError::Detail(
                StatusCode::CONFLICT,
                "a node with this hostname or ipaddr already exists".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await.map_err(crate::db::DbError::from)?;
    Ok(created("node", node_model(&n)))
}

fn lifetime(b: &mut Body, key: &str) -> Option<Option<Duration>> {
    if !b.has(key) {
        return None;
    }
    match b.get(key) {
        None => Some(None),
        Some(v) => {
            let parsed = match v {
                Value::Number(n) => n
                    .as_f64()
                    .filter(|s| *s >= 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok()),
                Value::String(s) => parse_config_duration(s).ok(),
                _ => None,
            };
            match parsed {
                Some(d) => Some(Some(d)),
                None => {
                    b.err(
                        "value_error",
                        &[json!(key)],
                        "Value error, invalid timedelta format",
                        v.clone(),
                    );
                    None
                }
            }
        }
    }
}

fn quota(b: &mut Body) -> Option<Option<u32>> {
    if !b.has("node_quota") {
        return None;
    }
    match b.get("node_quota") {
        None => Some(None),
        Some(v) => match lax_int(v) {
            Ok(n) if n <= 0 => {
                b.errors.push(json!({"type": "greater_than", "loc": ["body", "node_quota"], "msg": "Input should be greater than 0", "input": v, "ctx": {"gt": 0}}));
                None
            }
            Ok(n) if n > MAX_INT => {
                b.errors.push(json!({"type": "less_than_equal", "loc": ["body", "node_quota"],
                    "msg": format!("Input should be less than or equal to {MAX_INT}"), "input": v, "ctx": {"le": MAX_INT}}));
                None
            }
            Ok(n) => Some(Some(n as u32)),
            Err((kind, msg)) => {
                b.err(kind, &[json!("node_quota")], msg, v.clone());
                None
            }
        },
    }
}

async fn create_tenant(app: &AppState, req: Request<Incoming>) -> Reply {
    let caller = app.auth_required(req.headers()).await?;
    if !caller.row.is_admin {
        return Err(ApiError::forbidden());
    }
    let v = read_json(req).await?;
    let mut b = Body::new(&v)?;
    let name = b.string("name", true);
    let ssh_key = b.string("ssh_key", true);
    let is_admin = b.boolean("is_admin").unwrap_or(false);
    let node_quota = quota(&mut b).flatten();
    let session_lifetime = lifetime(&mut b, "session_lifetime").flatten();
    let session_lifetime_max = lifetime(&mut b, "session_lifetime_max").flatten();
    b.finish()?;
    let (t, key) = tenant::create(
        &app.db,
        &app.cfg.defaults,
        &NewTenant {
            name: name.unwrap_or_default(),
            ssh_key: ssh_key.unwrap_or_default(),
            is_admin,
            node_quota,
            session_lifetime,
            session_lifetime_max,
        },
        &caller.row.name,
    )
    .await?;
    Ok(created(
        "tenant",
        t.to_json(true, Some(json!(key.to_string()))),
    ))
}

const UPDATE_KEYS: [&str; 5] = [
    "ssh_key",
    "api_key",
    "node_quota",
    "session_lifetime",
    "session_lifetime_max",
];

async fn update_tenant(app: &AppState, req: Request<Incoming>, id: &str) -> Reply {
    let caller = app.auth_required(req.headers()).await?;
    let id = path_int(id, "id")?;
    let v = read_json(req).await?;
    let mut b = Body::new(&v)?;
    let is_update = UPDATE_KEYS.iter().any(|k| b.has(k));
    // with an update key the body is an update and `active` is ignored (upstream, bug 20)
    let active = if is_update { None } else { b.boolean("active") };
    if !is_update && active.is_none() {
        b.errors.push(json!({"type": "value_error", "loc": ["body", "TenantUpdateModel"],
            "msg": "Value error, one of ssh_key, api_key, node_quota, session_lifetime, session_lifetime_max is required", "input": v}));
        b.errors.push(json!({"type": "missing", "loc": ["body", "TenantRetireModel", "active"], "msg": "Field required", "input": v}));
        return Err(ApiError::Validation(b.errors));
    }
    let mut ch = TenantChanges::default();
    if is_update {
        ch.ssh_key = b.string("ssh_key", false).filter(|s| !s.is_empty());
        ch.api_key = match b.get("api_key") {
            None => None,
            Some(Value::String(s)) if s == "reset" => Some(ApiKeyChange::Reset),
            Some(Value::String(s)) => match crate::apikey::parse(s) {
                Some(u) => Some(ApiKeyChange::Set(u)),
                None => {
                    b.err(
                        "value_error",
                        &[json!("api_key")],
                        "Value error, expected a UUID or \"reset\"",
                        json!(MASK),
                    );
                    None
                }
            },
            Some(_) => {
                b.err(
                    "value_error",
                    &[json!("api_key")],
                    "Value error, expected a UUID or \"reset\"",
                    json!(MASK),
                );
                None
            }
        };
        ch.node_quota = quota(&mut b);
        ch.session_lifetime = lifetime(&mut b, "session_lifetime");
        ch.session_lifetime_max = lifetime(&mut b, "session_lifetime_max");
    }
    b.finish()?;
    // check order: 403 non-admin → 404 → 422 retired (unless unretiring) → apply. Upstream
    // checks the permission last and so tells anyone which ids exist and which tenants are
    // retired, by name (spec §12 bug 19, fixed)
    if !caller.row.is_admin {
        return Err(ApiError::forbidden());
    }
    let target = tenant::get_by_id(&app.db, &app.cfg.defaults, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let unretire_only = !is_update && active == Some(true);
    if !target.active() && !unretire_only {
        return Err(ApiError::unprocessable(format!(
            "tenant {} (id={}) is retired",
            target.row.name, target.row.id
        )));
    }
    if is_update {
        let (t, new_key) = tenant::update(
            &app.db,
            &app.cfg.defaults,
            &target.row.name,
            &ch,
            &caller.row.name,
        )
        .await?;
        let shown = new_key
            .map(|k| k.to_string())
            .unwrap_or_else(|| MASK.into());
        return Ok(ok("put", "tenant", t.to_json(false, Some(json!(shown)))));
    }
    let t: Tenant = tenant::set_retired(
        &app.db,
        &app.cfg.defaults,
        &target.row.name,
        active == Some(false),
        &caller.row.name,
    )
    .await?;
    Ok(ok("put", "tenant", t.to_json(false, Some(Value::Null))))
}
