//! Read-only queries of the dynamic inventory (`crate::inventory`): every listed node with its
//! current session and tenant in one statement, and the active tenants' SSH keys for the
//! artifacts storage box. Also a single plain connection for the short-lived inventory process.

use std::time::Duration;

use chrono::NaiveDateTime;
use futures_util::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::{describe, url, DbError, GenericClient};
use crate::state::NodeState;

/// A node as the inventory sees it: the `nodes` row plus its active session, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryNode {
    pub id: i32,
    pub hostname: Option<String>,
    pub ipaddr: Option<String>,
    pub state: NodeState,
    pub comment: Option<String>,
    pub pool: Option<String>,
    pub reusable: bool,
    /// `data` as stored: JSON text (parsed only where needed, see `crate::inventory`)
    pub data: String,
    pub retired_at: Option<NaiveDateTime>,
    /// the active (not retired) session holding the node
    pub session_id: Option<i32>,
    pub expires_at: Option<NaiveDateTime>,
    /// the name of that session's tenant
    pub tenant: Option<String>,
}

/// An active tenant whose projects the artifacts storage box accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactTenant {
    pub name: String,
    /// upstream's free text: one or several keys, one per line
    pub ssh_key: String,
}

/// Nodes in one of `states` (retired ones only if `include_retired`), each with its active
/// session (the newest, should a node be linked to several) and that session's tenant, handed to
/// `each` as they arrive — in no particular order (no sort: PostgreSQL streams the rows while
/// the caller works on the previous ones; the inventory sorts by name anyway).
pub async fn for_each_node(
    c: &impl GenericClient,
    states: &[NodeState],
    include_retired: bool,
    mut each: impl FnMut(InventoryNode),
) -> Result<(), DbError> {
    // states go as text and come back as text: a custom enum type would cost tokio-postgres
    // extra round trips to look it up
    let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 2] = [&states, &include_retired];
    let rows = c
        .query_raw(
            "WITH cur AS (
               SELECT DISTINCT ON (sn.node_id) sn.node_id, s.id AS session_id, s.expires_at,
                      t.name AS tenant
               FROM sessions s
               JOIN sessions_nodes sn ON sn.session_id = s.id
               JOIN tenants t ON t.id = s.tenant_id
               WHERE s.retired_at IS NULL
               ORDER BY sn.node_id, s.id DESC
             )
             SELECT n.id, n.hostname, n.ipaddr, n.state::text, n.comment, n.pool, n.reusable, n.data::text,
                    n.retired_at, cur.session_id, cur.expires_at, cur.tenant
             FROM nodes n LEFT JOIN cur ON cur.node_id = n.id
             WHERE n.state = ANY($1::text[]::node_state_enum[]) AND ($2 OR n.retired_at IS NULL)",
            params,
        )
        .await?;
    // row by row: each row's buffer is released before the next arrives
    let mut rows = std::pin::pin!(rows);
    while let Some(r) = rows.try_next().await? {
        each(InventoryNode {
            id: r.get(0),
            hostname: r.get(1),
            ipaddr: r.get(2),
            state: r.get::<_, &str>(3).parse()?,
            comment: r.get(4),
            pool: r.get(5),
            reusable: r.get(6),
            data: r.get(7),
            retired_at: r.get(8),
            session_id: r.get(9),
            expires_at: r.get(10),
            tenant: r.get(11),
        });
    }
    Ok(())
}

/// Active (not retired), non-admin tenants in name order: the CI projects of the artifacts box.
pub async fn artifact_tenants(c: &impl GenericClient) -> Result<Vec<ArtifactTenant>, DbError> {
    let rows = c
        .query(
            "SELECT name, ssh_key FROM tenants
             WHERE retired_at IS NULL AND NOT is_admin ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ArtifactTenant {
            name: r.get(0),
            ssh_key: r.get(1),
        })
        .collect())
}

/// One plain connection (no pool) for a short-lived reader, giving up after `timeout`.
/// The connection is driven by a task on the current runtime until the client is dropped.
pub async fn connect(url: &str, timeout: Duration) -> Result<Client, DbError> {
    let (mut cfg, tls) = url::parse_tls(url)?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(timeout);
    }
    let target = describe(&cfg);
    let connector = super::tls::connector(&tls).map_err(|e| DbError::connect(&target, e))?;
    // connect_timeout bounds each connection attempt; this bounds the whole handshake
    let (client, conn) = match tokio::time::timeout(timeout, cfg.connect(connector)).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(super::connect_error(&target, &e)),
        Err(_) => {
            return Err(DbError::connect(
                &target,
                format!("timed out after {timeout:?}"),
            ))
        }
    };
    tokio::spawn(conn);
    Ok(client)
}
