//! Pool-wide maintenance SQL: removing a retired pool's data (seed SOP "Retiring a node pool",
//! upstream's `remove-pool.sh`, done in one transaction and without its bugs — compat spec §11.3,
//! §12 bug 29).

use super::{DbError, GenericClient};

/// What [`remove`] deleted (or would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub session_links: u64,
    pub sessions: u64,
    pub nodes: u64,
}

/// Ids of active sessions that hold nodes of `pool` (removal must wait for them).
pub async fn active_sessions(c: &impl GenericClient, pool: &str) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT DISTINCT s.id FROM sessions s JOIN sessions_nodes sn ON sn.session_id = s.id
             LEFT JOIN nodes n ON n.id = sn.node_id
             WHERE s.retired_at IS NULL AND (sn.pool = $1 OR n.pool = $1) ORDER BY s.id",
            &[&pool],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Delete the historical data of `pool`: its session links, the (retired) sessions left without
/// links that only asked for this pool, its nodes (including torn-down `done` nodes whose `pool`
/// is already NULL but which were allocated from it), never spare reusable nodes. Run inside a
/// transaction; the caller checks [`active_sessions`] first.
pub async fn remove(c: &impl GenericClient, pool: &str) -> Result<Removed, DbError> {
    // nodes to delete: currently in the pool, or retired nodes only ever linked through it
    let node_ids: Vec<i32> = c
        .query(
            "SELECT id FROM nodes WHERE pool = $1
             UNION
             SELECT n.id FROM nodes n WHERE n.pool IS NULL AND n.retired_at IS NOT NULL
               AND EXISTS (SELECT 1 FROM sessions_nodes sn WHERE sn.node_id = n.id AND sn.pool = $1)
               AND NOT EXISTS (SELECT 1 FROM sessions_nodes sn WHERE sn.node_id = n.id AND sn.pool <> $1)",
            &[&pool],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sessions_touched: Vec<i32> = c
        .query(
            "SELECT DISTINCT session_id FROM sessions_nodes WHERE pool = $1 OR node_id = ANY($2)",
            &[&pool, &node_ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let session_links = c
        .execute(
            "DELETE FROM sessions_nodes WHERE pool = $1 OR node_id = ANY($2)",
            &[&pool, &node_ids],
        )
        .await?;
    // sessions now without nodes whose every spec named this pool
    let sessions = c
        .execute(
            "DELETE FROM sessions s WHERE s.retired_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM sessions_nodes sn WHERE sn.session_id = s.id)
               AND (s.id = ANY($2) OR s.data::jsonb -> 'nodes_specs' @> jsonb_build_array(jsonb_build_object('pool', $1::text)))
               AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(s.data::jsonb -> 'nodes_specs') e
                               WHERE e ->> 'pool' IS DISTINCT FROM $1)",
            &[&pool, &sessions_touched],
        )
        .await?;
    let nodes = c
        .execute("DELETE FROM nodes WHERE id = ANY($1)", &[&node_ids])
        .await?;
    Ok(Removed {
        session_links,
        sessions,
        nodes,
    })
}

/// Per pool (every pool named by a node, retired ones included, as upstream's monitoring
/// scripts count them; byte order of names): nodes `ready`, `deployed`, `provisioning`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub pool: String,
    pub ready: i64,
    pub deployed: i64,
    pub provisioning: i64,
}

/// The numbers of upstream's `duffy-stats` / `duffy-zabbix-stats` (compat spec §11.4), in one
/// query.
pub async fn stats(c: &impl GenericClient) -> Result<Vec<PoolStats>, DbError> {
    let rows = c
        .query(
            "SELECT pool,
                    count(*) FILTER (WHERE state = 'ready'),
                    count(*) FILTER (WHERE state = 'deployed'),
                    count(*) FILTER (WHERE state = 'provisioning')
             FROM nodes WHERE pool IS NOT NULL AND pool <> ''
             GROUP BY pool ORDER BY pool COLLATE \"C\"",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PoolStats {
            pool: r.get(0),
            ready: r.get(1),
            deployed: r.get(2),
            provisioning: r.get(3),
        })
        .collect())
}
