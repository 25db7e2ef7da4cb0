//! The scrape-time query of the Prometheus metrics (`crate::metrics`): every database-derived
//! gauge in one statement, one round trip.

use super::jobs::counts_towards_fill;
use super::{DbError, GenericClient};

/// What the database says at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// (pool — None for unused nodes in no pool —, state, count) of nodes not retired
    pub nodes: Vec<(Option<String>, String, i64)>,
    /// (pool, nodes counting towards its fill level: the scheduler's rule)
    pub filled: Vec<(String, i64)>,
    /// (tenant name, active sessions) of every tenant not retired (0 included) and of retired
    /// tenants that still have active sessions
    pub sessions: Vec<(String, i64)>,
    /// active sessions whose expiry has passed
    pub expired: i64,
    /// seconds since the longest-expired of them expired (0 when none)
    pub expired_max_age_secs: f64,
}

const SNAPSHOT: &str = concat!(
    "SELECT 'nodes', n.pool, n.state::text, count(*), 0::float8
       FROM nodes n WHERE n.retired_at IS NULL GROUP BY n.pool, n.state
     UNION ALL
     SELECT 'filled', n.pool, NULL, count(*), 0::float8
       FROM nodes n WHERE n.retired_at IS NULL AND n.pool IS NOT NULL AND ",
    counts_towards_fill!(),
    " GROUP BY n.pool
     UNION ALL
     SELECT 'sessions', t.name, NULL, count(s.id), 0::float8
       FROM tenants t LEFT JOIN sessions s ON s.tenant_id = t.id AND s.retired_at IS NULL
      WHERE t.retired_at IS NULL OR s.id IS NOT NULL
      GROUP BY t.name
     UNION ALL
     SELECT 'expired', NULL, NULL, count(*),
            COALESCE(EXTRACT(EPOCH FROM (clock_timestamp() AT TIME ZONE 'utc') - min(expires_at))::float8, 0)
       FROM sessions
      WHERE retired_at IS NULL AND expires_at <= (clock_timestamp() AT TIME ZONE 'utc')"
);

/// Read the [`Snapshot`].
pub async fn snapshot(c: &impl GenericClient) -> Result<Snapshot, DbError> {
    let mut s = Snapshot::default();
    for r in c.query(SNAPSHOT, &[]).await? {
        let kind: &str = r.get(0);
        let name: Option<String> = r.get(1);
        let n: i64 = r.get(3);
        match kind {
            "nodes" => s.nodes.push((name, r.get(2), n)),
            "filled" => s.filled.push((name.unwrap_or_default(), n)),
            "sessions" => s.sessions.push((name.unwrap_or_default(), n)),
            _ => {
                s.expired = n;
                s.expired_max_age_secs = r.get::<_, f64>(4).max(0.0);
            }
        }
    }
    s.nodes.sort();
    s.filled.sort();
    s.sessions.sort();
    Ok(s)
}
