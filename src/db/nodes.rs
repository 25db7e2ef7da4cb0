//! Node rows: reading, creating, and the single guarded state transition.

use chrono::NaiveDateTime;
use serde_json::Value as Json;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::{DbError, GenericClient};
use crate::state::{self, Actor, NodeState, StateError};

/// A row of `nodes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: i32,
    pub hostname: Option<String>,
    pub ipaddr: Option<String>,
    pub state: NodeState,
    pub comment: Option<String>,
    pub pool: Option<String>,
    pub reusable: bool,
    pub data: Json,
    pub created_at: NaiveDateTime,
    pub retired_at: Option<NaiveDateTime>,
}

/// The columns of a [`Node`], `state` as text (see [`NodeState`]'s SQL mapping: no enum type
/// lookup on a fresh connection).
pub const COLUMNS: &str =
    "id, hostname, ipaddr, state::text AS state, comment, pool, reusable, data, created_at, retired_at";

impl From<&Row> for Node {
    fn from(r: &Row) -> Self {
        Node {
            id: r.get("id"),
            hostname: r.get("hostname"),
            ipaddr: r.get("ipaddr"),
            state: r.get("state"),
            comment: r.get("comment"),
            pool: r.get("pool"),
            reusable: r.get("reusable"),
            data: r.get("data"),
            created_at: r.get("created_at"),
            retired_at: r.get("retired_at"),
        }
    }
}

/// Fields of a new node row.
#[derive(Debug, Clone, Default)]
pub struct NewNode {
    pub hostname: Option<String>,
    pub ipaddr: Option<String>,
    pub pool: Option<String>,
    pub reusable: bool,
    pub comment: Option<String>,
    pub data: Option<Json>,
}

/// Insert a node in `state` (creation is recorded in the history with no previous state).
pub async fn insert(
    c: &impl GenericClient,
    n: &NewNode,
    state: NodeState,
    actor: Actor,
    reason: &str,
) -> Result<Node, DbError> {
    let data = n
        .data
        .clone()
        .unwrap_or_else(|| Json::Object(Default::default()));
    let row = c
        .query_one(
            &format!(
                "WITH ins AS (
                   INSERT INTO nodes (hostname, ipaddr, state, comment, pool, reusable, data)
                   VALUES ($1, $2, $3::text::node_state_enum, $4, $5, $6, $7) RETURNING {COLUMNS}
                 ), hist AS (
                   INSERT INTO duffy_node_history (node_id, from_state, to_state, pool, actor, reason)
                   SELECT id, NULL, state::node_state_enum, pool, $8, $9 FROM ins
                 ) SELECT * FROM ins"
            ),
            &[
                &n.hostname,
                &n.ipaddr,
                &state,
                &n.comment,
                &n.pool,
                &n.reusable,
                &data,
                &actor.as_str(),
                &reason,
            ],
        )
        .await?;
    Ok(Node::from(&row))
}

/// One node by id.
pub async fn get(c: &impl GenericClient, id: i32) -> Result<Option<Node>, DbError> {
    Ok(c.query_typed_opt(
        &format!("SELECT {COLUMNS} FROM nodes WHERE id = $1"),
        &[(&id, Type::INT4)],
    )
    .await?
    .as_ref()
    .map(Node::from))
}

/// Non-retired nodes named `hostname`, in id order (the partial unique index allows several
/// while some are `provisioning`/`failed`).
pub async fn find_active_by_hostname(
    c: &impl GenericClient,
    hostname: &str,
) -> Result<Vec<Node>, DbError> {
    let rows = c
        .query_typed(
            &format!(
                "SELECT {COLUMNS} FROM nodes WHERE hostname = $1 AND retired_at IS NULL ORDER BY id"
            ),
            &[(&hostname, Type::TEXT)],
        )
        .await?;
    Ok(rows.iter().map(Node::from).collect())
}

/// One node by id, its row locked until the end of the caller's transaction.
pub async fn get_for_update(c: &impl GenericClient, id: i32) -> Result<Option<Node>, DbError> {
    Ok(c.query_typed_opt(
        &format!("SELECT {COLUMNS} FROM nodes WHERE id = $1 FOR UPDATE"),
        &[(&id, Type::INT4)],
    )
    .await?
    .as_ref()
    .map(Node::from))
}

/// Changes of a node's columns that keep its state (None = leave as is).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeUpdate {
    pub hostname: Option<Option<String>>,
    pub ipaddr: Option<Option<String>>,
    pub pool: Option<Option<String>>,
    pub comment: Option<Option<String>>,
    pub reusable: Option<bool>,
    /// the whole new `data` (callers merge under the row lock of [`get_for_update`])
    pub data: Option<Json>,
    /// set `retired_at` to now (UTC) if it is not set
    pub retire: bool,
}

impl NodeUpdate {
    pub fn is_empty(&self) -> bool {
        *self == NodeUpdate::default()
    }
}

/// Change columns of node `id` other than `state` (only [`transition`] changes states).
/// Returns the updated row, or None if there is no such node.
pub async fn update_columns(
    c: &impl GenericClient,
    id: i32,
    u: &NodeUpdate,
) -> Result<Option<Node>, DbError> {
    let empty = Json::Object(Default::default());
    Ok(c.query_opt(
        &format!(
            "UPDATE nodes SET
               hostname = CASE WHEN $2 THEN $3 ELSE hostname END,
               ipaddr   = CASE WHEN $4 THEN $5 ELSE ipaddr END,
               pool     = CASE WHEN $6 THEN $7 ELSE pool END,
               comment  = CASE WHEN $8 THEN $9 ELSE comment END,
               reusable = COALESCE($10, reusable),
               data     = CASE WHEN $11 THEN $12::json ELSE data END,
               retired_at = CASE WHEN $13 THEN COALESCE(retired_at, now() AT TIME ZONE 'utc')
                            ELSE retired_at END
             WHERE id = $1 RETURNING {COLUMNS}"
        ),
        &[
            &id,
            &u.hostname.is_some(),
            &u.hostname.clone().flatten(),
            &u.ipaddr.is_some(),
            &u.ipaddr.clone().flatten(),
            &u.pool.is_some(),
            &u.pool.clone().flatten(),
            &u.comment.is_some(),
            &u.comment.clone().flatten(),
            &u.reusable,
            &u.data.is_some(),
            &u.data.as_ref().unwrap_or(&empty),
            &u.retire,
        ],
    )
    .await?
    .as_ref()
    .map(Node::from))
}

/// Upstream's `data.error` of a failed node (compat spec §1.3): `{"error": {"failed_at":
/// "<naive ISO 8601 UTC>", "detail": "<text>"}}`, to merge with [`NodeChanges::data_merge`].
pub fn error_data(now: NaiveDateTime, detail: &str) -> Json {
    serde_json::json!({"error": {
        "failed_at": now.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        "detail": detail}})
}

/// Column changes made together with a transition (None = leave as is).
#[derive(Debug, Clone, Default)]
pub struct NodeChanges {
    pub pool: Option<Option<String>>,
    pub hostname: Option<Option<String>>,
    pub ipaddr: Option<Option<String>>,
    pub comment: Option<Option<String>>,
    /// keys merged into `data` (top level)
    pub data_merge: Option<Json>,
    /// keys removed from `data`
    pub data_remove: Vec<String>,
    /// set `retired_at` to now (UTC)
    pub retire: bool,
}

/// A request to move nodes to `to`, from any of `from`.
#[derive(Debug, Clone)]
pub struct TransitionRequest<'a> {
    pub node_ids: &'a [i32],
    pub from: &'a [NodeState],
    pub to: NodeState,
    pub actor: Actor,
    pub reason: Option<&'a str>,
    pub session_id: Option<i32>,
    pub changes: NodeChanges,
}

impl<'a> TransitionRequest<'a> {
    /// Nodes failing: → `failed` with `reason` in their history and as upstream's `data.error`
    /// ([`error_data`] at `now`), no session.
    pub fn failure(
        node_ids: &'a [i32],
        from: &'a [NodeState],
        actor: Actor,
        reason: &'a str,
        now: NaiveDateTime,
    ) -> Self {
        TransitionRequest {
            node_ids,
            from,
            to: NodeState::Failed,
            actor,
            reason: Some(reason),
            session_id: None,
            changes: NodeChanges {
                data_merge: Some(error_data(now, reason)),
                ..Default::default()
            },
        }
    }
}

/// A node that was moved, and the state it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub id: i32,
    pub from: NodeState,
}

/// Move every node of `req.node_ids` that is currently in one of `req.from` to `req.to`,
/// applying `req.changes` and writing one `duffy_node_history` row per node — one statement.
///
/// The `WHERE state = ANY(from)` guard is re-checked under the row lock, so of two concurrent
/// writers exactly one moves a node; the other sees it gone from its result. Nodes not in an
/// expected state are simply not returned (callers that need all of them use
/// [`transition_exact`]). Illegal `from -> to` pairs are refused before any SQL runs.
pub async fn transition(
    c: &impl GenericClient,
    req: &TransitionRequest<'_>,
) -> Result<Vec<Moved>, DbError> {
    if req.from.is_empty() {
        return Ok(vec![]);
    }
    for f in req.from {
        state::check(*f, req.to, req.actor)?;
    }
    let ch = &req.changes;
    let empty = Json::Object(Default::default());
    let rows = c
        .query(
            "WITH cand AS (
               SELECT id, state AS old_state FROM nodes
               WHERE id = ANY($1) AND state = ANY($2::text[]::node_state_enum[]) ORDER BY id FOR UPDATE
             ), upd AS (
               UPDATE nodes n SET
                 state    = $3::text::node_state_enum,
                 pool     = CASE WHEN $4 THEN $5 ELSE n.pool END,
                 hostname = CASE WHEN $6 THEN $7 ELSE n.hostname END,
                 ipaddr   = CASE WHEN $8 THEN $9 ELSE n.ipaddr END,
                 comment  = CASE WHEN $10 THEN $11 ELSE n.comment END,
                 data     = CASE WHEN $12 THEN COALESCE((
                              SELECT json_object_agg(k, v ORDER BY src, ord) FROM (
                                SELECT 0 AS src, e.ord, e.key AS k, e.value AS v
                                  FROM json_each(n.data) WITH ORDINALITY AS e(key, value, ord)
                                 WHERE e.key <> ALL($13::text[])
                                   AND e.key NOT IN (SELECT json_object_keys($14::json))
                                UNION ALL
                                SELECT 1, m.ord, m.key, m.value
                                  FROM json_each($14::json) WITH ORDINALITY AS m(key, value, ord)
                              ) kv), '{}'::json) ELSE n.data END,
                 retired_at = CASE WHEN $15 THEN (now() AT TIME ZONE 'utc') ELSE n.retired_at END
               FROM cand WHERE n.id = cand.id
               RETURNING n.id, cand.old_state, n.pool
             ), hist AS (
               INSERT INTO duffy_node_history (node_id, from_state, to_state, pool, session_id, actor, reason)
               SELECT id, old_state, $3::text::node_state_enum, pool, $16, $17, $18 FROM upd
             )
             SELECT id, old_state::text FROM upd ORDER BY id",
            &[
                &req.node_ids,
                &req.from,
                &req.to,
                &ch.pool.is_some(),
                &ch.pool.clone().flatten(),
                &ch.hostname.is_some(),
                &ch.hostname.clone().flatten(),
                &ch.ipaddr.is_some(),
                &ch.ipaddr.clone().flatten(),
                &ch.comment.is_some(),
                &ch.comment.clone().flatten(),
                &(ch.data_merge.is_some() || !ch.data_remove.is_empty()),
                &ch.data_remove,
                &ch.data_merge.as_ref().unwrap_or(&empty),
                &ch.retire,
                &req.session_id,
                &req.actor.as_str(),
                &req.reason,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Moved {
            id: r.get(0),
            from: r.get(1),
        })
        .collect())
}

/// Like [`transition`] but every requested node must move; otherwise nothing is returned and an
/// error names the first node that was not in an expected state. Run it inside a transaction
/// so that the partial move is rolled back with the error.
pub async fn transition_exact(
    c: &impl GenericClient,
    req: &TransitionRequest<'_>,
) -> Result<Vec<Moved>, DbError> {
    let moved = transition(c, req).await?;
    if moved.len() == req.node_ids.len() {
        return Ok(moved);
    }
    let missing = req
        .node_ids
        .iter()
        .copied()
        .find(|id| !moved.iter().any(|m| m.id == *id))
        .unwrap_or_default();
    let expected = req
        .from
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("|");
    Err(match get(c, missing).await? {
        None => StateError::NotFound(missing).into(),
        Some(n) => StateError::Conflict {
            id: missing,
            expected,
            current: n.state.to_string(),
        }
        .into(),
    })
}

/// One entry of a node's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub from: Option<NodeState>,
    pub to: Option<NodeState>,
    pub actor: String,
    pub reason: Option<String>,
    pub session_id: Option<i32>,
}

/// A node's history, oldest first.
pub async fn history(c: &impl GenericClient, node_id: i32) -> Result<Vec<HistoryEntry>, DbError> {
    let rows = c
        .query(
            "SELECT from_state::text, to_state::text, actor, reason, session_id FROM duffy_node_history
             WHERE node_id = $1 ORDER BY id",
            &[&node_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| HistoryEntry {
            from: r.get(0),
            to: r.get(1),
            actor: r.get(2),
            reason: r.get(3),
            session_id: r.get(4),
        })
        .collect())
}

/// All non-retired nodes, in id order, as a stream of rows: constant memory whatever the
/// count. The rows arrive while the caller holds `c`'s connection.
pub async fn stream_active(
    c: &impl GenericClient,
) -> Result<impl futures_util::Stream<Item = Result<Node, DbError>> + Send + 'static, DbError> {
    use futures_util::StreamExt;
    let rows = c
        .query_raw(
            &format!("SELECT {COLUMNS} FROM nodes WHERE retired_at IS NULL ORDER BY id"),
            std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
        )
        .await?;
    Ok(rows.map(|r| r.map(|r| Node::from(&r)).map_err(DbError::from)))
}

/// Per-state counts of a pool's non-retired nodes.
pub async fn pool_levels(
    c: &impl GenericClient,
    pool: &str,
) -> Result<Vec<(NodeState, i64)>, DbError> {
    let rows = c
        .query(
            "SELECT state::text, count(*) FROM nodes WHERE retired_at IS NULL AND pool = $1 GROUP BY state",
            &[&pool],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The non-retired nodes of `pool` in one of `states`, in id order (`duffy reconcile`).
pub async fn in_pool(
    c: &impl GenericClient,
    pool: &str,
    states: &[NodeState],
) -> Result<Vec<Node>, DbError> {
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM nodes WHERE pool = $1 AND retired_at IS NULL \
                 AND state::text = ANY($2) ORDER BY id"
            ),
            &[&pool, &states],
        )
        .await?;
    Ok(rows.iter().map(Node::from).collect())
}
