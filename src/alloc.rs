//! Sessions: allocation of ready nodes to tenants, contextualization, extension and retirement
//! (compat spec §4.7). Shared by the REST API, the legacy API and the `duffy_session` module.
//!
//! Allocation is one transaction: the target tenant's row is locked (so a tenant's concurrent
//! requests are serialised and the quota — counting only *active* sessions — cannot be
//! overshot), then per spec `SELECT … FOR UPDATE SKIP LOCKED LIMIT n` picks ready nodes (two
//! requests never wait on or take the same node), all-or-nothing across specs. Nodes go
//! `ready → contextualizing`; after the tenant's keys are installed (concurrently, with a time
//! limit) they go `deployed`. A failed contextualization marks the failing nodes `failed`, takes
//! the keys off the others, returns them to `ready` and deletes the session: nothing leaks.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::NaiveDateTime;
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::config::{Config, Contextualize};
use crate::db::nodes::{self, Node, NodeChanges, TransitionRequest};
use crate::db::sessions::{self as q, SessionRow};
use crate::db::{audit, tenants, Db, DbError};
use crate::events::{self, Event};
use crate::state::{Actor, NodeState};
use crate::tenant::Tenant;
use crate::{contextualize, timefmt};

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("Not Found")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("quota exceeded: requested nodes ({requested}) + current allocation ({current}) = {} > {quota}", requested.saturating_add(*current))]
    Quota {
        requested: i64,
        current: i64,
        quota: i64,
    },
    #[error("{0}")]
    Unprocessable(String),
    #[error("contextualization of nodes failed")]
    Contextualization,
    #[error("decontextualizing nodes failed after contextualization failure")]
    Decontextualization,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for SessionError {
    fn from(e: tokio_postgres::Error) -> Self {
        SessionError::Db(e.into())
    }
}

/// One `{pool, quantity}` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodesSpec {
    pub pool: String,
    pub quantity: i64,
}

/// A session with its tenant and nodes, ready to be shown.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub row: SessionRow,
    pub tenant: Tenant,
    pub nodes: Vec<Node>,
}

fn opt_time(t: &Option<NaiveDateTime>) -> Value {
    json!(t.as_ref().map(timefmt::iso_z))
}

/// The API's `NodeModel` (without `state` for session nodes it is added by the caller). `data`
/// leaves without its secret-named keys ([`crate::secrets`], like the inventory's `duffy_data`):
/// every response that shows a node goes through here.
pub fn node_json(n: &Node, state: Option<NodeState>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("hostname".into(), json!(n.hostname));
    m.insert("ipaddr".into(), json!(n.ipaddr));
    m.insert("comment".into(), json!(n.comment));
    m.insert("pool".into(), json!(n.pool));
    m.insert("reusable".into(), json!(n.reusable));
    let mut data = n.data.clone();
    // secret-named keys (BMC passwords, private keys, …) never leave through the API
    crate::secrets::redact(&mut data, crate::secrets::Redact::Remove);
    m.insert("data".into(), data);
    m.insert("id".into(), json!(n.id));
    m.insert("state".into(), json!(state));
    m
}

impl SessionView {
    /// The API's `SessionModel`, fields in upstream's order.
    pub fn to_json(&self) -> Value {
        let r = &self.row;
        let active = r.retired_at.is_none();
        let mut m = Map::new();
        m.insert("retired_at".into(), opt_time(&r.retired_at));
        m.insert("active".into(), json!(active));
        m.insert("created_at".into(), json!(timefmt::iso_z(&r.created_at)));
        m.insert("id".into(), json!(r.id));
        m.insert("expires_at".into(), opt_time(&r.expires_at));
        m.insert("tenant".into(), self.tenant.to_json(false, None));
        m.insert("data".into(), r.data.clone());
        m.insert(
            "nodes".into(),
            Value::Array(
                self.nodes
                    .iter()
                    .map(|n| Value::Object(node_json(n, active.then_some(n.state))))
                    .collect(),
            ),
        );
        Value::Object(m)
    }
}

/// Attach tenants and nodes to session rows (two pipelined queries whatever the number of
/// sessions).
async fn views(
    c: &impl crate::db::GenericClient,
    cfg: &Config,
    rows: Vec<SessionRow>,
) -> Result<Vec<SessionView>, DbError> {
    let ids: Vec<i32> = rows.iter().map(|r| r.id).collect();
    let tenant_ids: Vec<i32> = rows
        .iter()
        .map(|r| r.tenant_id)
        .collect::<BTreeSet<i32>>()
        .into_iter()
        .collect();
    // both queries in one flight: tokio-postgres pipelines concurrent requests on a connection
    let (mut links, ts) = tokio::try_join!(q::nodes_of(c, &ids), tenants::by_ids(c, &tenant_ids))?;
    let ts: Vec<Tenant> = ts
        .into_iter()
        .map(|t| Tenant::new(t, &cfg.defaults))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let nodes: Vec<Node> = links
            .iter()
            .filter(|(sid, _)| *sid == row.id)
            .map(|(_, n)| n.clone())
            .collect();
        links.retain(|(sid, _)| *sid != row.id);
        let Some(tenant) = ts.iter().find(|t| t.row.id == row.tenant_id).cloned() else {
            continue;
        };
        out.push(SessionView { row, tenant, nodes });
    }
    Ok(out)
}

/// Active sessions: all of them for admins and anonymous callers, else the caller's own.
pub async fn list(
    db: &Db,
    cfg: &Config,
    caller: Option<&Tenant>,
) -> Result<Vec<SessionView>, SessionError> {
    let c = db.get().await?;
    let filter = caller.filter(|t| !t.row.is_admin).map(|t| t.row.id);
    let rows = q::list_active(&**c, filter).await?;
    Ok(views(&**c, cfg, rows).await?)
}

/// One session (retired ones too); only its owner or an admin may see it.
pub async fn get(
    db: &Db,
    cfg: &Config,
    caller: &Tenant,
    id: i32,
) -> Result<SessionView, SessionError> {
    let c = db.get().await?;
    let v = view_by_id(&**c, cfg, id)
        .await?
        .ok_or(SessionError::NotFound)?;
    if !caller.row.is_admin && v.row.tenant_id != caller.row.id {
        return Err(SessionError::Forbidden("Forbidden".into()));
    }
    Ok(v)
}

/// One session (retired too) with its tenant and nodes, None if there is no such session:
/// three queries in one pipelined flight (no permission check: the caller's job).
pub async fn view_by_id(
    c: &impl crate::db::GenericClient,
    cfg: &Config,
    id: i32,
) -> Result<Option<SessionView>, DbError> {
    let ids = [id];
    let (row, links, tenant) = tokio::try_join!(
        q::get(c, id),
        q::nodes_of(c, &ids),
        tenants::of_session(c, id)
    )?;
    Ok(match (row, tenant) {
        (Some(row), Some(tenant)) => Some(SessionView {
            row,
            tenant: Tenant::new(tenant, &cfg.defaults),
            nodes: links.into_iter().map(|(_, n)| n).collect(),
        }),
        _ => None,
    })
}

/// Create a session for `caller` (or, for admins, for `tenant_id`) with nodes per `specs`.
pub async fn create(
    db: &Db,
    cfg: &Config,
    caller: &Tenant,
    tenant_id: Option<i32>,
    specs: &[NodesSpec],
) -> Result<SessionView, SessionError> {
    create_idempotent(db, cfg, caller, tenant_id, specs, None).await
}

/// [`create`] with an `Idempotency-Key`: when an earlier create of the same tenant with the
/// same key made a session (within a day), that session is answered and nothing is allocated;
/// otherwise the key is stored with the new session in the same transaction. The answer is
/// read inside the transaction that commits it, so a committed create is never answered with an
/// error because the database went away just after.
pub async fn create_idempotent(
    db: &Db,
    cfg: &Config,
    caller: &Tenant,
    tenant_id: Option<i32>,
    specs: &[NodesSpec],
    idempotency_key: Option<&str>,
) -> Result<SessionView, SessionError> {
    if !caller.row.is_admin && tenant_id.is_some_and(|id| id != caller.row.id) {
        return Err(SessionError::Forbidden(
            "can't create session for other tenant".into(),
        ));
    }
    let target_id = tenant_id.unwrap_or(caller.row.id);
    let requested: i64 = specs
        .iter()
        .map(|s| s.quantity)
        .fold(0i64, |a, b| a.saturating_add(b));

    // Transaction A: quota, session row, node reservation.
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    // lock the tenant row: one allocation per tenant at a time, so the quota holds
    let target = match tenants::by_id_for_update(&*tx, target_id).await? {
        Some(t) => t,
        None => {
            return Err(SessionError::Unprocessable(format!(
                "can't find tenant with id {target_id}"
            )))
        }
    };
    let target = Tenant::new(target, &cfg.defaults);
    if !target.active() {
        return Err(SessionError::Unprocessable(format!(
            "tenant '{}' isn't active",
            target.row.name
        )));
    }
    if let Some(key) = idempotency_key {
        // the tenant row lock serialises creates of this tenant: one key, one session
        if let Some(sid) = q::idempotent_session(&*tx, target_id, key).await? {
            let view = view_by_id(&*tx, cfg, sid)
                .await?
                .ok_or(SessionError::NotFound)?;
            tx.commit().await?;
            return Ok(view);
        }
    }
    if !target.row.is_admin {
        let current = q::active_allocation(&*tx, target_id).await?;
        let quota = target
            .effective_node_quota
            .map(i64::from)
            .unwrap_or(i64::MAX);
        if requested.saturating_add(current) > quota {
            return Err(SessionError::Quota {
                requested,
                current,
                quota,
            });
        }
    }
    let lifetime = target
        .effective_session_lifetime
        .unwrap_or(Duration::from_secs(6 * 3600))
        .min(crate::tenant::MAX_LIFETIME)
        .as_secs_f64();
    let data = json!({"nodes_specs": specs.iter().map(|s| json!({"quantity": s.quantity, "pool": s.pool})).collect::<Vec<_>>()});
    let session = q::insert(&*tx, target_id, lifetime, &data).await?;
    if let Some(key) = idempotency_key {
        q::remember_idempotency(&*tx, target_id, key, session.id).await?;
    }
    let mut to_contextualize: Vec<i32> = Vec::new();
    let mut direct: Vec<i32> = Vec::new();
    let mut pools: Vec<String> = Vec::new();
    for spec in specs {
        if !pools.contains(&spec.pool) {
            pools.push(spec.pool.clone());
        }
        let ids = q::reserve_ready(&*tx, &spec.pool, spec.quantity).await?;
        if (ids.len() as i64) < spec.quantity {
            return Err(SessionError::Unprocessable(format!(
                "can't reserve nodes: quantity={} pool='{}'",
                spec.quantity, spec.pool
            )));
        }
        nodes::transition_exact(
            &*tx,
            &TransitionRequest {
                node_ids: &ids,
                from: &[NodeState::Ready],
                to: NodeState::Contextualizing,
                actor: Actor::Api,
                reason: Some("allocated to a session"),
                session_id: Some(session.id),
                changes: NodeChanges {
                    data_merge: Some(
                        json!({"nodes_spec": {"quantity": spec.quantity, "pool": spec.pool}}),
                    ),
                    ..Default::default()
                },
            },
        )
        .await?;
        q::link_nodes(&*tx, session.id, &spec.pool, &ids).await?;
        let ctx = cfg
            .pool(&spec.pool)
            .map(|p| p.contextualize)
            .unwrap_or(Contextualize::Ssh);
        if ctx == Contextualize::Ssh {
            to_contextualize.extend(&ids);
        } else {
            direct.extend(&ids);
        }
    }
    audit::record(
        &*tx,
        audit::Entity::Session,
        Some(session.id),
        "create",
        &caller.row.name,
        data.clone(),
    )
    .await?;
    if to_contextualize.is_empty() {
        deploy(
            &*tx,
            &direct,
            session.id,
            "no contextualization for this pool",
        )
        .await?;
        events::notify(
            &*tx,
            &cfg.events.channel,
            &Event::SessionCreated {
                session_id: session.id,
                pools,
            },
        )
        .await?;
        let view = view_in(&*tx, cfg, session.id).await?;
        tx.commit().await?;
        return Ok(view);
    }
    tx.commit().await?;
    drop(conn);

    // Contextualization, outside any transaction; nodes are `contextualizing` meanwhile.
    let c = db.get().await?;
    let nodes_now: Vec<Node> = q::nodes_of(&**c, &[session.id])
        .await?
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| to_contextualize.contains(&n.id))
        .collect();
    drop(c);
    let ips: Vec<String> = nodes_now
        .iter()
        .map(|n| n.ipaddr.clone().unwrap_or_default())
        .collect();
    let failures = contextualize::install(&cfg.contextualize, &ips, &target.row.ssh_key).await;

    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    // The session may have been retired (by its tenant, who sees it in GET /sessions, or by
    // the scheduler's expiry) while the keys were being installed: under its row lock now, so
    // no retirement can come between this check and the deploy. A retirement took the nodes to
    // `deprovisioning` (retire_locked), where the scheduler removes the keys and tears them
    // down: nothing is deployed then, and the session stays retired.
    let retired_meanwhile = q::get_for_update(&*tx, session.id)
        .await?
        .is_none_or(|r| r.retired_at.is_some());
    if retired_meanwhile {
        tx.commit().await?;
        return Err(SessionError::Unprocessable(format!(
            "session {} was retired while its nodes were being contextualized",
            session.id
        )));
    }
    if failures.is_empty() {
        deploy(&*tx, &to_contextualize, session.id, "tenant keys installed").await?;
        if !direct.is_empty() {
            deploy(
                &*tx,
                &direct,
                session.id,
                "no contextualization for this pool",
            )
            .await?;
        }
        events::notify(
            &*tx,
            &cfg.events.channel,
            &Event::SessionCreated {
                session_id: session.id,
                pools,
            },
        )
        .await?;
        let view = view_in(&*tx, cfg, session.id).await?;
        tx.commit().await?;
        return Ok(view);
    }
    // Roll back: failed nodes → failed; keys off the others → ready (or failed if that fails);
    // the session is deleted. Like upstream, the answer is "contextualization of nodes failed"
    // whatever happened to the keys; only a failing cleanup itself gives the other 503.
    let cleanup = async move {
        let failed_ids: Vec<(i32, String)> = nodes_now
            .iter()
            .filter_map(|n| {
                let ip = n.ipaddr.clone().unwrap_or_default();
                failures
                    .iter()
                    .find(|f| f.ipaddr == ip)
                    .map(|f| (n.id, f.reason.clone()))
            })
            .collect();
        let ok_nodes: Vec<&Node> = nodes_now
            .iter()
            .filter(|n| !failed_ids.iter().any(|(id, _)| *id == n.id))
            .collect();
        let ok_ips: Vec<String> = ok_nodes
            .iter()
            .map(|n| n.ipaddr.clone().unwrap_or_default())
            .collect();
        let undo_failures = contextualize::remove(&cfg.contextualize, &ok_ips).await;
        for (id, reason) in &failed_ids {
            fail_node(&*tx, *id, session.id, "contextualizing node failed", reason).await?;
        }
        let mut back_to_ready = Vec::new();
        for n in &ok_nodes {
            let ip = n.ipaddr.clone().unwrap_or_default();
            match undo_failures.iter().find(|f| f.ipaddr == ip) {
                Some(f) => {
                    fail_node(
                        &*tx,
                        n.id,
                        session.id,
                        "decontextualizing node failed",
                        &f.reason,
                    )
                    .await?
                }
                None => back_to_ready.push(n.id),
            }
        }
        let all_ids: Vec<i32> = nodes_now
            .iter()
            .map(|n| n.id)
            .chain(direct.iter().copied())
            .collect();
        if !back_to_ready.is_empty() || !direct.is_empty() {
            let ready_ids: Vec<i32> = back_to_ready.iter().chain(direct.iter()).copied().collect();
            nodes::transition(
                &*tx,
                &TransitionRequest {
                    node_ids: &ready_ids,
                    from: &[NodeState::Contextualizing],
                    to: NodeState::Ready,
                    actor: Actor::Api,
                    reason: Some("allocation rolled back"),
                    session_id: Some(session.id),
                    changes: NodeChanges {
                        data_remove: vec!["nodes_spec".into()],
                        ..Default::default()
                    },
                },
            )
            .await?;
        }
        q::delete(&*tx, session.id).await?;
        audit::record(
            &*tx,
            audit::Entity::Session,
            Some(session.id),
            "rollback",
            &caller.row.name,
            json!({"reason": "contextualization failed", "failed_nodes": failed_ids.iter().map(|(id, _)| id).collect::<Vec<_>>(), "nodes": all_ids}),
        )
        .await?;
        events::notify(&*tx, &cfg.events.channel, &Event::SessionFailed { pools }).await?;
        tx.commit().await?;
        Ok::<(), SessionError>(())
    };
    match cleanup.await {
        Ok(()) => Err(SessionError::Contextualization),
        Err(e) => {
            tracing::error!(
                "session {}: cleanup after a contextualization failure: {e}",
                session.id
            );
            Err(SessionError::Decontextualization)
        }
    }
}

async fn deploy(
    c: &impl crate::db::GenericClient,
    ids: &[i32],
    session_id: i32,
    why: &str,
) -> Result<(), DbError> {
    nodes::transition_exact(
        c,
        &TransitionRequest {
            node_ids: ids,
            from: &[NodeState::Contextualizing],
            to: NodeState::Deployed,
            actor: Actor::Api,
            reason: Some(why),
            session_id: Some(session_id),
            changes: NodeChanges::default(),
        },
    )
    .await?;
    Ok(())
}

async fn fail_node(
    c: &impl crate::db::GenericClient,
    id: i32,
    session_id: i32,
    what: &str,
    reason: &str,
) -> Result<(), DbError> {
    let now = q::now_utc(c).await?;
    nodes::transition(
        c,
        &TransitionRequest {
            node_ids: &[id],
            from: &[NodeState::Contextualizing, NodeState::Deployed],
            to: NodeState::Failed,
            actor: Actor::Api,
            reason: Some(&format!("{what}: {reason}")),
            session_id: Some(session_id),
            changes: NodeChanges {
                data_merge: Some(nodes::error_data(now, what)),
                data_remove: vec!["nodes_spec".into()],
                ..Default::default()
            },
        },
    )
    .await?;
    Ok(())
}

/// The session's view, read on `c` — the transaction that is about to commit the change, so
/// that a committed change is answered from what it wrote, not by a second read that a
/// database restart could fail.
async fn view_in(
    c: &impl crate::db::GenericClient,
    cfg: &Config,
    id: i32,
) -> Result<SessionView, SessionError> {
    view_by_id(c, cfg, id).await?.ok_or(SessionError::NotFound)
}

/// The latest `expires_at` a session can have: 9999-12-31T23:59:59.999999 (RFC 3339 and
/// Python's `datetime` end there).
fn max_expiry() -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .expect("valid date")
}

/// A new expiry requested by `PUT /sessions/{id}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expiry {
    /// relative to the current `expires_at` (milliseconds, may be negative)
    Relative(i64),
    /// absolute, naive UTC (upstream drops any offset)
    Absolute(NaiveDateTime),
}

/// Update a session: extend/shorten (`expires_at`) and/or retire (`active: false`).
pub async fn update(
    db: &Db,
    cfg: &Config,
    caller: &Tenant,
    id: i32,
    active: Option<bool>,
    expires: Option<Expiry>,
) -> Result<SessionView, SessionError> {
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    let row = q::get_for_update(&*tx, id)
        .await?
        .ok_or(SessionError::NotFound)?;
    if !caller.row.is_admin && row.tenant_id != caller.row.id {
        return Err(SessionError::Forbidden("Forbidden".into()));
    }
    if row.retired_at.is_some() {
        return Err(SessionError::Unprocessable(format!(
            "session {id} is retired"
        )));
    }
    if let Some(exp) = expires {
        let base = row.expires_at.unwrap_or(row.created_at);
        let out_of_range =
            || SessionError::Unprocessable("expires_at: out of range (year 1 to 9999)".into());
        let mut new = match exp {
            Expiry::Relative(ms) => chrono::Duration::try_milliseconds(ms)
                .and_then(|d| base.checked_add_signed(d))
                .ok_or_else(out_of_range)?,
            Expiry::Absolute(t) => t,
        };
        new = new.max(row.created_at);
        if !caller.row.is_admin {
            if let Some(max) = caller.effective_session_lifetime_max {
                let limit = chrono::Duration::from_std(max)
                    .ok()
                    .and_then(|d| row.created_at.checked_add_signed(d))
                    .unwrap_or(NaiveDateTime::MAX);
                new = new.min(limit);
            }
        }
        // what clients (Python's datetime) and the wire format (RFC 3339) can represent
        if new > max_expiry() {
            return Err(out_of_range());
        }
        q::set_expires(&*tx, id, new).await?;
        audit::record(
            &*tx,
            audit::Entity::Session,
            Some(id),
            "extend",
            &caller.row.name,
            json!({"expires_at": timefmt::iso_z(&new)}),
        )
        .await?;
    }
    if active == Some(false) {
        retire_locked(&*tx, cfg, id, &caller.row.name).await?;
    }
    let view = view_in(&*tx, cfg, id).await?;
    tx.commit().await?;
    Ok(view)
}

/// Retire a session whose row the transaction holds: nodes go to `deprovisioning` (the
/// scheduler tears them down), and the scheduler is notified.
pub async fn retire_locked(
    c: &impl crate::db::GenericClient,
    cfg: &Config,
    id: i32,
    actor: &str,
) -> Result<Vec<i32>, SessionError> {
    q::retire(c, id).await?;
    let ids = q::node_ids(c, id).await?;
    // contextualizing too: a session retired while its create installs the tenant's keys
    // (the create then deploys nothing, see `create`)
    nodes::transition(
        c,
        &TransitionRequest {
            node_ids: &ids,
            from: &[NodeState::Deployed, NodeState::Contextualizing],
            to: NodeState::Deprovisioning,
            actor: Actor::Api,
            reason: Some("session retired"),
            session_id: Some(id),
            changes: NodeChanges::default(),
        },
    )
    .await?;
    audit::record(
        c,
        audit::Entity::Session,
        Some(id),
        "retire",
        actor,
        json!({"nodes": ids}),
    )
    .await?;
    events::notify(
        c,
        &cfg.events.channel,
        &Event::SessionRetired {
            session_id: id,
            node_ids: ids.clone(),
        },
    )
    .await?;
    Ok(ids)
}
