//! `duffy_session`: request a session (`state: present` + `nodes_specs`), set its lifetime,
//! retire it (`state: absent`) — through the database (the allocation code of [`crate::alloc`],
//! the very functions behind the REST API) or through the REST API itself (`api_url` + the
//! tenant's `auth_name`/`auth_key`, with [`crate::client`]), so CI tenants can use it from
//! their own playbooks like upstream's `cico` module.
//!
//! Both paths work on the API's session document (`SessionModel`), so the module's logic and
//! results are the same. Idempotence: a given `session_id` is only changed when its expiry
//! differs from `created_at + lifetime` (clamped to the tenant's maximum like the server
//! does) or when it must be retired; a request without `session_id` creates a session each
//! time unless `reuse: true`, which returns the caller's newest active session with the same
//! `nodes_specs`.

use std::time::Duration;

use anyhow::{anyhow, bail};
use chrono::NaiveDateTime;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::{Dflt, Duffy, Failure, Module, Opt, Outcome, Run, Spec, Type};
use crate::alloc::{self, Expiry, NodesSpec, SessionError};
use crate::client::{self, Client};
use crate::tenant::{self, Tenant};
use crate::{db, duration, timefmt};

const SPEC_OPTIONS: &[Opt] = &[Opt::str("pool").required(), Opt::int("quantity").required()];

const OPTIONS: &[Opt] = &[
    super::OPT_CONFIG,
    super::OPT_DATABASE_URL,
    Opt::new("nodes_specs", Type::List)
        .elements(Type::Dict)
        .suboptions(SPEC_OPTIONS),
    Opt::int("session_id").aliases(&["id"]),
    Opt::str("lifetime"),
    Opt::bool("reuse").default(Dflt::Bool(false)),
    Opt::str("tenant"),
    Opt::str("api_url"),
    Opt::str("auth_name"),
    Opt::str("auth_key").no_log(),
    Opt::str("state")
        .choices(&["present", "absent"])
        .default(Dflt::Str("present")),
];

pub const MODULE: Module = Module {
    name: "duffy_session",
    spec: Spec {
        options: OPTIONS,
        mutually_exclusive: &[&["api_url", "database_url"], &["api_url", "tenant"]],
        required_together: &[&["auth_name", "auth_key"]],
        required_one_of: &[],
        required_if: &[("state", "absent", &["session_id"])],
    },
    run,
};

/// Where sessions live: the database (acting as a tenant) or the REST API.
enum Backend {
    Db {
        duffy: Box<Duffy>,
        /// the `tenant` option's tenant
        tenant: Option<Tenant>,
    },
    Rest {
        client: Client,
        name: String,
    },
}

fn session_error(e: SessionError) -> anyhow::Error {
    match e {
        SessionError::NotFound => anyhow!("session not found"),
        SessionError::Forbidden(d) => anyhow!("forbidden: {d}"),
        other => anyhow!("{other}"),
    }
}

/// The `session` of an API answer, or its `error.detail` as the failure.
fn rest_session(v: Value, what: &str) -> anyhow::Result<Value> {
    if client::is_error(&v) {
        let detail = v["error"]["detail"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v["error"].to_string());
        bail!("{what}: the API refused: {detail}");
    }
    v.get("session")
        .cloned()
        .ok_or_else(|| anyhow!("{what}: the API's answer has no session"))
}

impl Backend {
    /// The caller (DB path): the `tenant` option, else the session's owner.
    async fn caller(&self, session_id: Option<i32>) -> anyhow::Result<Tenant> {
        let Backend::Db { duffy, tenant, .. } = self else {
            unreachable!("caller() is for the database path")
        };
        if let Some(t) = tenant {
            return Ok(t.clone());
        }
        let Some(id) = session_id else {
            bail!("tenant is required to request a session through the database (or use api_url with auth_name/auth_key)");
        };
        let c = duffy.db.get().await?;
        let row = db::sessions::get(&**c, id)
            .await?
            .ok_or_else(|| anyhow!("session {id} not found"))?;
        drop(c);
        tenant::get_by_id(&duffy.db, &duffy.cfg.defaults, row.tenant_id)
            .await?
            .ok_or_else(|| anyhow!("the tenant of session {id} does not exist"))
    }

    /// One session (retired too), None if it does not exist.
    async fn get(&self, id: i64) -> anyhow::Result<Option<Value>> {
        match self {
            Backend::Db { duffy, tenant, .. } => {
                let id =
                    i32::try_from(id).map_err(|_| anyhow!("session_id {id} is out of range"))?;
                // one read of the row: the caller is the `tenant` option (checked like the
                // API does) or, by default, the session's owner
                let c = duffy.db.get().await?;
                let Some(v) = alloc::view_by_id(&**c, &duffy.cfg, id).await? else {
                    return Ok(None);
                };
                if let Some(t) = tenant {
                    if !t.row.is_admin && v.row.tenant_id != t.row.id {
                        return Err(session_error(SessionError::Forbidden("Forbidden".into())));
                    }
                }
                Ok(Some(v.to_json()))
            }
            Backend::Rest { client, .. } => {
                let path = format!("/sessions/{id}");
                let (status, body) = client.send(Method::GET, &path, None).await?;
                if status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let v: Value = serde_json::from_slice(&body).map_err(|e| {
                    anyhow!(
                        "GET {}: HTTP {status}: the response is not JSON: {e}",
                        client.url(&path)
                    )
                })?;
                if status != StatusCode::OK {
                    let detail = v.get("detail").map(|d| match d {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
                    bail!(
                        "session {id}: the API refused (HTTP {status}): {}",
                        detail.unwrap_or_default()
                    );
                }
                v.get("session")
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| anyhow!("session {id}: the API's answer has no session"))
            }
        }
    }

    /// The caller's active sessions.
    async fn list_own(&self) -> anyhow::Result<Vec<Value>> {
        let (all, name) = match self {
            Backend::Db { duffy, .. } => {
                let caller = self.caller(None).await?;
                let list = alloc::list(&duffy.db, &duffy.cfg, Some(&caller))
                    .await
                    .map_err(session_error)?;
                (
                    list.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
                    caller.row.name,
                )
            }
            Backend::Rest { client, name } => {
                let v = client.list_sessions().await?;
                if client::is_error(&v) {
                    bail!(
                        "listing sessions: the API refused: {}",
                        v["error"]["detail"]
                    );
                }
                let list = v
                    .get("sessions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                (list, name.clone())
            }
        };
        Ok(all
            .into_iter()
            .filter(|s| s["tenant"]["name"].as_str() == Some(name.as_str()))
            .filter(|s| s["active"] == json!(true))
            .collect())
    }

    async fn create(&self, specs: &[NodesSpec]) -> anyhow::Result<Value> {
        match self {
            Backend::Db { duffy, .. } => {
                let caller = self.caller(None).await?;
                let s = alloc::create(&duffy.db, &duffy.cfg, &caller, None, specs)
                    .await
                    .map_err(session_error)?;
                Ok(s.to_json())
            }
            Backend::Rest { client, .. } => {
                let specs: Vec<client::NodesSpec> = specs
                    .iter()
                    .map(|s| client::NodesSpec {
                        pool: s.pool.clone(),
                        quantity: s.quantity as u64,
                    })
                    .collect();
                rest_session(
                    client.request_session(&specs).await?,
                    "requesting a session",
                )
            }
        }
    }

    async fn retire(&self, id: i64) -> anyhow::Result<Value> {
        match self {
            Backend::Db { duffy, .. } => {
                let id = id as i32;
                let caller = self.caller(Some(id)).await?;
                let s = alloc::update(&duffy.db, &duffy.cfg, &caller, id, Some(false), None)
                    .await
                    .map_err(session_error)?;
                Ok(s.to_json())
            }
            Backend::Rest { client, .. } => rest_session(
                client.retire_session(id).await?,
                &format!("retiring session {id}"),
            ),
        }
    }

    async fn set_expiry(&self, id: i64, at: NaiveDateTime) -> anyhow::Result<Value> {
        match self {
            Backend::Db { duffy, .. } => {
                let id = id as i32;
                let caller = self.caller(Some(id)).await?;
                let s = alloc::update(
                    &duffy.db,
                    &duffy.cfg,
                    &caller,
                    id,
                    None,
                    Some(Expiry::Absolute(at)),
                )
                .await
                .map_err(session_error)?;
                Ok(s.to_json())
            }
            Backend::Rest { client, .. } => rest_session(
                client.update_session(id, &timefmt::iso_z(&at)).await?,
                &format!("changing the expiry of session {id}"),
            ),
        }
    }
}

fn parse_time(v: &Value) -> Option<NaiveDateTime> {
    let s = v.as_str()?;
    let s = s.strip_suffix('Z').unwrap_or(s);
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// `created_at + lifetime`, clamped to the tenant's maximum like the server does.
fn wanted_expiry(s: &Value, lifetime: Duration) -> anyhow::Result<NaiveDateTime> {
    let created = parse_time(&s["created_at"])
        .ok_or_else(|| anyhow!("the session has no readable created_at"))?;
    let mut l = lifetime;
    if s["tenant"]["is_admin"] != json!(true) {
        if let Some(max) = s["tenant"]["effective_session_lifetime_max"].as_f64() {
            l = l.min(Duration::try_from_secs_f64(max).unwrap_or(l));
        }
    }
    let d = chrono::Duration::from_std(l).map_err(|_| anyhow!("lifetime is too long"))?;
    created
        .checked_add_signed(d)
        .ok_or_else(|| anyhow!("lifetime is too long"))
}

fn specs_of(v: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["pool"].as_str().unwrap_or_default().to_string(),
                        s["quantity"].as_i64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// What `diff` shows of a session.
fn view(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "active": s["active"],
        "expires_at": s["expires_at"],
        "tenant": s["tenant"]["name"],
        "nodes_specs": s["data"]["nodes_specs"],
        "nodes": s["nodes"].as_array().map(|n| n.iter().map(|x| x["hostname"].clone()).collect::<Vec<_>>()),
    })
}

/// The module's result keys for a session (like `duffy client request-session` shows).
fn with_session(mut o: Outcome, s: &Value) -> Outcome {
    let nodes: Vec<Value> = s["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| json!({"id": n["id"], "hostname": n["hostname"], "ipaddr": n["ipaddr"], "pool": n["pool"]}))
                .collect()
        })
        .unwrap_or_default();
    let hostnames: Vec<Value> = nodes.iter().map(|n| n["hostname"].clone()).collect();
    o = o
        .with("session_id", s["id"].clone())
        .with("expires_at", s["expires_at"].clone())
        .with("nodes", nodes)
        .with("hostnames", hostnames)
        .with("session", s.clone());
    o
}

fn run(run: &mut Run) -> anyhow::Result<Outcome> {
    let p = &run.params;
    let state = p.str("state").unwrap_or("present").to_string();
    let session_id = p.int("session_id");
    let reuse = p.bool("reuse").unwrap_or(false);
    let lifetime = match p.str("lifetime") {
        None => None,
        Some(s) => Some(duration::parse_config_duration(s).map_err(|_| {
            anyhow!(
                "lifetime: expected a duration like 6h, 1h30m or a number of seconds, got {s:?}"
            )
        })?),
    };
    let specs: Vec<NodesSpec> = p
        .list("nodes_specs")
        .map(|l| {
            l.iter()
                .map(|s| NodesSpec {
                    pool: s["pool"].as_str().unwrap_or_default().to_string(),
                    quantity: s["quantity"].as_i64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(bad) = specs.iter().find(|s| s.quantity < 1) {
        bail!(
            "nodes_specs: quantity must be an integer >= 1, got {} for pool {}",
            bad.quantity,
            bad.pool
        );
    }
    if state == "present" && session_id.is_none() && specs.is_empty() {
        bail!("state is present but neither session_id nor nodes_specs is given: nodes_specs (a list of {{pool, quantity}}) is required to request a session");
    }
    let api_url = p.str("api_url").map(str::to_string);
    if api_url.is_some() && p.str("auth_name").is_none() {
        bail!("api_url needs the tenant's credentials: auth_name and auth_key");
    }
    let tenant_name = p.str("tenant").map(str::to_string);

    db::block_on(async {
        let backend = match &api_url {
            Some(url) => Backend::Rest {
                client: Client::new(
                    url,
                    Some((
                        run.params.str("auth_name").unwrap_or_default(),
                        run.params.str("auth_key").unwrap_or_default(),
                    )),
                )?,
                name: run.params.str("auth_name").unwrap_or_default().to_string(),
            },
            None => {
                let duffy = Duffy::open(run).await?;
                let tenant = match &tenant_name {
                    Some(n) => Some(tenant::get(&duffy.db, &duffy.cfg.defaults, n).await?),
                    None => None,
                };
                Backend::Db {
                    duffy: Box::new(duffy),
                    tenant,
                }
            }
        };

        // find the session to work on
        let mut existing: Option<Value> = None;
        if let Some(id) = session_id {
            existing = backend.get(id).await?;
            if existing.is_none() {
                if state == "absent" {
                    return Ok(Outcome::new(false, format!("session {id} does not exist")));
                }
                return Err(Failure::new(format!("session {id} not found")).into());
            }
        } else if reuse && state == "present" {
            let want = specs_of(&json!(specs
                .iter()
                .map(|s| json!({"pool": s.pool, "quantity": s.quantity}))
                .collect::<Vec<_>>()));
            existing = backend
                .list_own()
                .await?
                .into_iter()
                .filter(|s| specs_of(&s["data"]["nodes_specs"]) == want)
                .max_by_key(|s| s["id"].as_i64().unwrap_or_default());
        }

        match (state.as_str(), existing) {
            ("absent", Some(s)) => {
                let id = s["id"].as_i64().unwrap_or_default();
                if s["active"] != json!(true) {
                    return Ok(with_session(
                        Outcome::new(false, format!("session {id} is already retired")),
                        &s,
                    ));
                }
                let before = view(&s);
                let mut after = before.clone();
                after["active"] = json!(false);
                if run.check_mode {
                    return Ok(with_session(
                        Outcome::new(true, format!("session {id} would be retired")).diff(
                            format!("session {id}"),
                            before,
                            after,
                        ),
                        &s,
                    ));
                }
                let s = backend.retire(id).await?;
                Ok(with_session(
                    Outcome::new(true, format!("session {id} retired")).diff(
                        format!("session {id}"),
                        before,
                        view(&s),
                    ),
                    &s,
                ))
            }
            ("absent", None) => Ok(Outcome::new(false, "no session to retire")),
            (_, Some(s)) => {
                let id = s["id"].as_i64().unwrap_or_default();
                if s["active"] != json!(true) {
                    return Err(Failure::new(format!(
                        "session {id} is retired and cannot be made active again"
                    ))
                    .into());
                }
                let reused = if session_id.is_none() {
                    format!("reusing session {id}")
                } else {
                    format!("session {id}")
                };
                let Some(l) = lifetime else {
                    return Ok(with_session(
                        Outcome::new(false, format!("{reused}: active")),
                        &s,
                    ));
                };
                let at = wanted_expiry(&s, l)?;
                let cur = parse_time(&s["expires_at"]);
                if cur.is_some_and(|c| (c - at).num_milliseconds().abs() < 1000) {
                    return Ok(with_session(
                        Outcome::new(false, format!("{reused}: active, expiry up to date")),
                        &s,
                    ));
                }
                let before = view(&s);
                let mut after = before.clone();
                after["expires_at"] = json!(timefmt::iso_z(&at));
                if run.check_mode {
                    return Ok(with_session(
                        Outcome::new(
                            true,
                            format!("{reused}: expiry would be set to {}", timefmt::iso_z(&at)),
                        )
                        .diff(format!("session {id}"), before, after),
                        &s,
                    ));
                }
                let s = backend.set_expiry(id, at).await?;
                Ok(with_session(
                    Outcome::new(
                        true,
                        format!(
                            "{reused}: expiry set to {}",
                            s["expires_at"].as_str().unwrap_or("?")
                        ),
                    )
                    .diff(format!("session {id}"), before, view(&s)),
                    &s,
                ))
            }
            (_, None) => {
                let asked: Vec<String> = specs
                    .iter()
                    .map(|s| format!("{} from {}", s.quantity, s.pool))
                    .collect();
                let asked = asked.join(", ");
                let after = json!({
                    "active": true,
                    "nodes_specs": specs.iter().map(|s| json!({"quantity": s.quantity, "pool": s.pool})).collect::<Vec<_>>(),
                });
                if run.check_mode {
                    return Ok(Outcome::new(
                        true,
                        format!("a session would be requested ({asked})"),
                    )
                    .diff("session (new)", json!({}), after));
                }
                let mut s = backend.create(&specs).await?;
                let id = s["id"].as_i64().unwrap_or_default();
                if let Some(l) = lifetime {
                    let at = wanted_expiry(&s, l)?;
                    s = backend.set_expiry(id, at).await?;
                }
                Ok(with_session(
                    Outcome::new(true, format!("session {id} created ({asked})")).diff(
                        format!("session {id}"),
                        json!({}),
                        view(&s),
                    ),
                    &s,
                ))
            }
        }
    })
}
