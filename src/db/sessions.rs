//! Session rows and their node links (`sessions`, `sessions_nodes`), and the allocation queries.

use chrono::NaiveDateTime;
use serde_json::Value as Json;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::nodes::{Node, COLUMNS as NODE_COLUMNS};
use super::{DbError, GenericClient};

/// A row of `sessions`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    pub id: i32,
    pub tenant_id: i32,
    pub expires_at: Option<NaiveDateTime>,
    pub data: Json,
    pub created_at: NaiveDateTime,
    pub retired_at: Option<NaiveDateTime>,
}

const COLUMNS: &str = "id, tenant_id, expires_at, data, created_at, retired_at";

impl From<&Row> for SessionRow {
    fn from(r: &Row) -> Self {
        SessionRow {
            id: r.get("id"),
            tenant_id: r.get("tenant_id"),
            expires_at: r.get("expires_at"),
            data: r.get("data"),
            created_at: r.get("created_at"),
            retired_at: r.get("retired_at"),
        }
    }
}

/// Insert an active session expiring `lifetime_secs` from now (UTC).
pub async fn insert(
    c: &impl GenericClient,
    tenant_id: i32,
    lifetime_secs: f64,
    data: &Json,
) -> Result<SessionRow, DbError> {
    let row = c
        .query_one(
            &format!(
                "INSERT INTO sessions (tenant_id, expires_at, data)
                 VALUES ($1, (now() AT TIME ZONE 'utc') + make_interval(secs => $2), $3)
                 RETURNING {COLUMNS}"
            ),
            &[&tenant_id, &lifetime_secs, data],
        )
        .await?;
    Ok(SessionRow::from(&row))
}

pub async fn get(c: &impl GenericClient, id: i32) -> Result<Option<SessionRow>, DbError> {
    Ok(c.query_typed_opt(
        &format!("SELECT {COLUMNS} FROM sessions WHERE id = $1"),
        &[(&id, Type::INT4)],
    )
    .await?
    .as_ref()
    .map(SessionRow::from))
}

/// Lock a session row until the end of the transaction.
pub async fn get_for_update(
    c: &impl GenericClient,
    id: i32,
) -> Result<Option<SessionRow>, DbError> {
    Ok(c.query_opt(
        &format!("SELECT {COLUMNS} FROM sessions WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?
    .as_ref()
    .map(SessionRow::from))
}

/// Active sessions (of one tenant, or all), in id order.
pub async fn list_active(
    c: &impl GenericClient,
    tenant_id: Option<i32>,
) -> Result<Vec<SessionRow>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM sessions WHERE retired_at IS NULL AND ($1::int IS NULL OR tenant_id = $1)
                 ORDER BY id"
            ),
            &[&tenant_id],
        )
        .await?;
    Ok(rows.iter().map(SessionRow::from).collect())
}

/// The nodes linked to each of `session_ids`: `(session_id, node)`, ordered by session, node id.
pub async fn nodes_of(
    c: &impl GenericClient,
    session_ids: &[i32],
) -> Result<Vec<(i32, Node)>, DbError> {
    let cols = NODE_COLUMNS
        .split(", ")
        .map(|col| format!("n.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = c
        .query_typed(
            &format!(
                "SELECT sn.session_id, {cols} FROM sessions_nodes sn JOIN nodes n ON n.id = sn.node_id
                 WHERE sn.session_id = ANY($1) ORDER BY sn.session_id, n.id"
            ),
            &[(&session_ids, Type::INT4_ARRAY)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>("session_id"), Node::from(r)))
        .collect())
}

/// Number of nodes in the tenant's active sessions (the quota's "current allocation").
pub async fn active_allocation(c: &impl GenericClient, tenant_id: i32) -> Result<i64, DbError> {
    Ok(c.query_one(
        "SELECT count(*) FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
         WHERE s.tenant_id = $1 AND s.retired_at IS NULL",
        &[&tenant_id],
    )
    .await?
    .get(0))
}

/// Lock up to `quantity` ready nodes of `pool`, skipping nodes other transactions hold.
pub async fn reserve_ready(
    c: &impl GenericClient,
    pool: &str,
    quantity: i64,
) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT id FROM nodes WHERE retired_at IS NULL AND state = 'ready' AND pool = $1
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&pool, &quantity],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Link nodes to a session; `data` of each link is a snapshot of the node's `data`.
pub async fn link_nodes(
    c: &impl GenericClient,
    session_id: i32,
    pool: &str,
    node_ids: &[i32],
) -> Result<u64, DbError> {
    Ok(c.execute(
        "INSERT INTO sessions_nodes (session_id, node_id, pool, data)
         SELECT $1, id, $2, data FROM nodes WHERE id = ANY($3)",
        &[&session_id, &pool, &node_ids],
    )
    .await?)
}

/// Remove a session and its links (rollback of a failed creation, as upstream 3.4 does).
pub async fn delete(c: &impl GenericClient, session_id: i32) -> Result<(), DbError> {
    c.execute(
        "DELETE FROM sessions_nodes WHERE session_id = $1",
        &[&session_id],
    )
    .await?;
    c.execute(
        "DELETE FROM duffy_idempotency_keys WHERE session_id = $1",
        &[&session_id],
    )
    .await?;
    c.execute("DELETE FROM sessions WHERE id = $1", &[&session_id])
        .await?;
    Ok(())
}

/// Retire a session now.
pub async fn retire(c: &impl GenericClient, id: i32) -> Result<SessionRow, DbError> {
    let row = c
        .query_one(
            &format!("UPDATE sessions SET retired_at = now() AT TIME ZONE 'utc' WHERE id = $1 RETURNING {COLUMNS}"),
            &[&id],
        )
        .await?;
    Ok(SessionRow::from(&row))
}

/// Set a session's expiry.
pub async fn set_expires(
    c: &impl GenericClient,
    id: i32,
    at: NaiveDateTime,
) -> Result<SessionRow, DbError> {
    let row = c
        .query_one(
            &format!("UPDATE sessions SET expires_at = $2 WHERE id = $1 RETURNING {COLUMNS}"),
            &[&id, &at],
        )
        .await?;
    Ok(SessionRow::from(&row))
}

/// Ids of the nodes linked to a session.
pub async fn node_ids(c: &impl GenericClient, session_id: i32) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT node_id FROM sessions_nodes WHERE session_id = $1 ORDER BY node_id",
            &[&session_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The current database time (naive UTC), for clamping computations.
pub async fn now_utc(c: &impl GenericClient) -> Result<NaiveDateTime, DbError> {
    Ok(c.query_one(
        "SELECT (clock_timestamp() AT TIME ZONE 'utc')::timestamp",
        &[],
    )
    .await?
    .get(0))
}

/// How long an `Idempotency-Key` is remembered (a day).
pub const IDEMPOTENCY_SECS: f64 = 86_400.0;

/// The session an earlier create of `tenant_id` with `key` made (within
/// [`IDEMPOTENCY_SECS`]), if any. Call with the tenant row locked (creates of one tenant are
/// serialised by that lock, so two requests with one key cannot both miss).
pub async fn idempotent_session(
    c: &impl GenericClient,
    tenant_id: i32,
    key: &str,
) -> Result<Option<i32>, DbError> {
    Ok(c.query_opt(
        "SELECT session_id FROM duffy_idempotency_keys
             WHERE tenant_id = $1 AND key = $2
               AND created_at > clock_timestamp() - make_interval(secs => $3)",
        &[&tenant_id, &key, &IDEMPOTENCY_SECS],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Remember that `key` of `tenant_id` made `session_id` (replacing an expired entry), and
/// forget the tenant's expired keys.
pub async fn remember_idempotency(
    c: &impl GenericClient,
    tenant_id: i32,
    key: &str,
    session_id: i32,
) -> Result<(), DbError> {
    c.execute(
        "WITH gone AS (
           DELETE FROM duffy_idempotency_keys
           WHERE tenant_id = $1 AND created_at <= clock_timestamp() - make_interval(secs => $4)
         )
         INSERT INTO duffy_idempotency_keys (tenant_id, key, session_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, key) DO UPDATE
           SET session_id = EXCLUDED.session_id, created_at = clock_timestamp()",
        &[&tenant_id, &key, &session_id, &IDEMPOTENCY_SECS],
    )
    .await?;
    Ok(())
}
