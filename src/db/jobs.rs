//! The scheduler's queries: the `duffy_jobs` queue (claim with `FOR UPDATE SKIP LOCKED` and a
//! lease, renew, finish, retry with back-off, give up), the per-pool fill lock and counts, the
//! nodes that need a job (deprovisioning, orphaned provisioning, stale contextualizing), session
//! expiry, and the `LISTEN` connection. Node *state* changes still go through
//! [`super::nodes::transition`].

use serde_json::Value as Json;
use tokio::sync::mpsc;

use super::nodes::{Node, COLUMNS as NODE_COLUMNS};
use super::{DbError, GenericClient};

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Provision,
    Deprovision,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Provision => "provision",
            JobKind::Deprovision => "deprovision",
        }
    }
}

/// A row of `duffy_jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub pool: String,
    pub node_ids: Vec<i32>,
    pub state: String,
    /// attempts so far, including the one just claimed
    pub attempts: i32,
    pub last_error: Option<String>,
    /// the previous lease ran out (its scheduler died): this claim takes the job over
    pub taken_over: bool,
}

const JOB_COLUMNS: &str = "id, kind, pool, node_ids, state, attempts, last_error";

fn job(r: &tokio_postgres::Row, taken_over: bool) -> Job {
    let kind: String = r.get("kind");
    Job {
        id: r.get("id"),
        kind: if kind == "provision" {
            JobKind::Provision
        } else {
            JobKind::Deprovision
        },
        pool: r.get("pool"),
        node_ids: r.get("node_ids"),
        state: r.get("state"),
        attempts: r.get("attempts"),
        last_error: r.get("last_error"),
        taken_over,
    }
}

/// Queue a job, runnable at once.
pub async fn enqueue(
    c: &impl GenericClient,
    kind: JobKind,
    pool: &str,
    node_ids: &[i32],
) -> Result<i64, DbError> {
    Ok(c.query_one(
        "INSERT INTO duffy_jobs (kind, pool, node_ids) VALUES ($1, $2, $3) RETURNING id",
        &[&kind.as_str(), &pool, &node_ids],
    )
    .await?
    .get(0))
}

/// Claim the next runnable job — queued and due, or running with an expired lease — for
/// `owner`, leased for `lease_secs`, skipping pools that already run as many jobs as `limits`
/// (`{pool: max}`) allows, and every deprovision job when `provision_only`.
///
/// The order is fair and puts refills first: provision jobs before deprovision jobs (a pool
/// below its fill level never waits behind a teardown backlog), then the pool that runs the
/// fewest jobs now (no pool starves another), then age. One statement: concurrent schedulers
/// skip each other's candidates (`SKIP LOCKED`) and never claim the same job; callers that need
/// `limits` exact across processes run it after [`lock`]`("claim")` in a transaction.
pub async fn claim(
    c: &impl GenericClient,
    owner: &str,
    lease_secs: f64,
    limits: &Json,
    provision_only: bool,
) -> Result<Option<Job>, DbError> {
    let row = c
        .query_opt(
            &format!(
                "WITH busy AS (
                   SELECT pool, count(*) AS n FROM duffy_jobs
                   WHERE state = 'running' AND lease_until >= clock_timestamp()
                   GROUP BY pool
                 ), cand AS (
                   SELECT j.id, j.state = 'running' AS taken_over
                   FROM duffy_jobs j LEFT JOIN busy b ON b.pool = j.pool
                   WHERE ((j.state = 'queued' AND j.not_before <= clock_timestamp())
                          OR (j.state = 'running' AND j.lease_until < clock_timestamp()))
                     AND (NOT $4 OR j.kind = 'provision')
                     AND (($3::jsonb -> j.pool) IS NULL
                          OR COALESCE(b.n, 0) < ($3::jsonb ->> j.pool)::int)
                   ORDER BY j.kind = 'provision' DESC, COALESCE(b.n, 0), j.id
                   LIMIT 1 FOR UPDATE OF j SKIP LOCKED
                 )
                 UPDATE duffy_jobs j SET state = 'running', attempts = attempts + 1,
                   lease_until = clock_timestamp() + make_interval(secs => $2),
                   leased_by = $1, updated_at = clock_timestamp(),
                   last_error = CASE WHEN cand.taken_over
                     THEN 'attempt ' || j.attempts || ' interrupted: lease of ' || j.leased_by
                          || ' expired (scheduler killed?)'
                     ELSE j.last_error END
                 FROM cand WHERE j.id = cand.id
                 RETURNING {}, cand.taken_over",
                JOB_COLUMNS
                    .split(", ")
                    .map(|c| format!("j.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&owner, &lease_secs, limits, &provision_only],
        )
        .await?;
    Ok(row.map(|r| {
        let t: bool = r.get("taken_over");
        job(&r, t)
    }))
}

/// Running jobs whose lease has expired (their scheduler died); [`claim`] takes them over.
pub async fn expired_leases(c: &impl GenericClient) -> Result<Vec<Job>, DbError> {
    let rows = c
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM duffy_jobs
                 WHERE state = 'running' AND lease_until < clock_timestamp() ORDER BY id"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| job(r, true)).collect())
}

/// Extend the lease of a job `owner` still holds; false if it lost it.
pub async fn renew(
    c: &impl GenericClient,
    id: i64,
    owner: &str,
    lease_secs: f64,
) -> Result<bool, DbError> {
    Ok(c.execute(
        "UPDATE duffy_jobs SET lease_until = clock_timestamp() + make_interval(secs => $3),
               updated_at = clock_timestamp()
             WHERE id = $1 AND leased_by = $2 AND state = 'running'",
        &[&id, &owner, &lease_secs],
    )
    .await?
        == 1)
}

/// Record where the current attempt's playbook output is kept.
pub async fn set_log_path(
    c: &impl GenericClient,
    id: i64,
    owner: &str,
    path: &str,
) -> Result<(), DbError> {
    c.execute(
        "UPDATE duffy_jobs SET log_path = $3, updated_at = clock_timestamp()
         WHERE id = $1 AND leased_by = $2 AND state = 'running'",
        &[&id, &owner, &path],
    )
    .await?;
    Ok(())
}

/// The job succeeded.
pub async fn finish(c: &impl GenericClient, id: i64, owner: &str) -> Result<bool, DbError> {
    Ok(c.execute(
        "UPDATE duffy_jobs SET state = 'done', lease_until = NULL, finished_at = clock_timestamp(),
               updated_at = clock_timestamp()
             WHERE id = $1 AND leased_by = $2 AND state = 'running'",
        &[&id, &owner],
    )
    .await?
        == 1)
}

/// The attempt failed: queue the job again for `node_ids`, not before `delay_secs` from now.
pub async fn retry(
    c: &impl GenericClient,
    id: i64,
    owner: &str,
    node_ids: &[i32],
    delay_secs: f64,
    error: &str,
) -> Result<bool, DbError> {
    Ok(c.execute(
        "UPDATE duffy_jobs SET state = 'queued', lease_until = NULL, node_ids = $3,
               not_before = clock_timestamp() + make_interval(secs => $4), last_error = $5,
               updated_at = clock_timestamp()
             WHERE id = $1 AND leased_by = $2 AND state = 'running'",
        &[&id, &owner, &node_ids, &delay_secs, &error],
    )
    .await?
        == 1)
}

/// Hand jobs `owner` holds back unfinished — all of them (scheduler stopping), or those of
/// `only` (interrupted by a database outage) —: queued again at once, the interrupted attempt
/// not counted. Returns the ids handed back.
pub async fn release(
    c: &impl GenericClient,
    owner: &str,
    only: Option<&[i64]>,
) -> Result<Vec<i64>, DbError> {
    let rows = c
        .query(
            "UPDATE duffy_jobs SET state = 'queued', lease_until = NULL, leased_by = NULL,
                   attempts = greatest(attempts - 1, 0), not_before = clock_timestamp(),
                   updated_at = clock_timestamp()
             WHERE leased_by = $1 AND state = 'running' AND ($2::bigint[] IS NULL OR id = ANY($2))
             RETURNING id",
            &[&owner, &only],
        )
        .await?;
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The job failed for good.
pub async fn give_up(
    c: &impl GenericClient,
    id: i64,
    owner: &str,
    error: &str,
) -> Result<bool, DbError> {
    Ok(c.execute(
        "UPDATE duffy_jobs SET state = 'failed', lease_until = NULL, last_error = $3,
               finished_at = clock_timestamp(), updated_at = clock_timestamp()
             WHERE id = $1 AND leased_by = $2 AND state = 'running'",
        &[&id, &owner, &error],
    )
    .await?
        == 1)
}

/// Delete finished jobs older than `days` (the node history and audit log keep the story).
pub async fn prune(c: &impl GenericClient, days: f64) -> Result<u64, DbError> {
    Ok(c.execute(
        "DELETE FROM duffy_jobs WHERE state IN ('done', 'failed')
               AND finished_at < clock_timestamp() - make_interval(days => $1::int)",
        &[&(days as i32)],
    )
    .await?)
}

/// Seconds until the next queued job is due or the next lease expires (≤ 0: now).
pub async fn next_due_secs(c: &impl GenericClient) -> Result<Option<f64>, DbError> {
    Ok(c
        .query_one(
            "SELECT EXTRACT(EPOCH FROM min(CASE WHEN state = 'queued' THEN not_before ELSE lease_until END)
                      - clock_timestamp())::float8
             FROM duffy_jobs WHERE state IN ('queued', 'running')",
            &[],
        )
        .await?
        .get(0))
}

/// Open (queued or running) jobs.
pub async fn open_count(c: &impl GenericClient) -> Result<i64, DbError> {
    Ok(c.query_one(
        "SELECT count(*) FROM duffy_jobs WHERE state IN ('queued', 'running')",
        &[],
    )
    .await?
    .get(0))
}

/// Serialise fill (and job creation) per `key` until the end of the transaction, across
/// scheduler processes.
pub async fn lock(c: &impl GenericClient, key: &str) -> Result<(), DbError> {
    c.execute(
        "SELECT pg_advisory_xact_lock(hashtext('duffy_scheduler:' || $1))",
        &[&key],
    )
    .await?;
    Ok(())
}

/// The lock of `pool`'s fill ([`lock`]): the scheduler's fill and `duffy admin remove-pool`
/// never touch one pool's rows at once.
pub async fn lock_pool_fill(c: &impl GenericClient, pool: &str) -> Result<(), DbError> {
    lock(c, &format!("fill:{pool}")).await
}

/// A pool's fill count: non-retired nodes `ready` or `provisioning`, plus `failed` nodes that an
/// open provision job will retry.
pub async fn fill_count(c: &impl GenericClient, pool: &str) -> Result<i64, DbError> {
    Ok(c.query_one(FILL_COUNT, &[&pool]).await?.get(0))
}

// The node ↔ open job queries below never compare every node with every job (`n.id =
// ANY(j.node_ids)` in a correlated subquery is a nested loop: 4 000 nodes × 4 000 jobs took
// 6 s): the ids the open jobs of a kind cover are one set, built once (a hashed subplan over
// the open-jobs index), and each node is a probe into it. `tests/scheduler.rs` checks the plans'
// work on 30 000 nodes and 5 000 open jobs.

/// **The** rule of which node `n` (not retired) counts towards its pool's fill level: `ready`,
/// `provisioning`, or `failed` with a provision job still open (it will be retried). Used by
/// [`FILL_COUNT`] and by the metrics' pool gauges (`db::metrics`).
macro_rules! counts_towards_fill {
    () => {
        "(n.state IN ('ready', 'provisioning')
            OR (n.state = 'failed' AND n.id IN (
                  SELECT unnest(j.node_ids) FROM duffy_jobs j
                  WHERE j.kind = 'provision' AND j.state IN ('queued', 'running'))))"
    };
}
pub(crate) use counts_towards_fill;

/// [`fill_count`]'s query (`$1`: the pool).
pub const FILL_COUNT: &str = concat!(
    "SELECT count(*) FROM nodes n
     WHERE n.retired_at IS NULL AND n.pool = $1
       AND ",
    counts_towards_fill!()
);

/// [`deprovisioning_without_job`]'s query.
pub const DEPROVISIONING_WITHOUT_JOB: &str =
    "SELECT n.id, COALESCE(n.pool, (SELECT sn.pool FROM sessions_nodes sn
                                    WHERE sn.node_id = n.id
                                    ORDER BY sn.session_id DESC LIMIT 1))
     FROM nodes n
     WHERE n.state = 'deprovisioning' AND n.retired_at IS NULL
       AND NOT n.id IN (SELECT unnest(j.node_ids) FROM duffy_jobs j
                        WHERE j.kind = 'deprovision' AND j.state IN ('queued', 'running'))
     ORDER BY n.id";

/// [`provisioning_without_job`]'s query (`$1`: seconds).
pub const PROVISIONING_WITHOUT_JOB: &str = "SELECT n.id, n.pool FROM nodes n
     WHERE n.state = 'provisioning' AND n.retired_at IS NULL
       AND NOT n.id IN (SELECT unnest(j.node_ids) FROM duffy_jobs j
                        WHERE j.kind = 'provision' AND j.state IN ('queued', 'running'))
       AND COALESCE((SELECT max(h.at) FROM duffy_node_history h WHERE h.node_id = n.id),
                    n.created_at AT TIME ZONE 'utc')
           < clock_timestamp() - make_interval(secs => $1)
     ORDER BY n.id";

/// Consecutive provision jobs of `pool` that gave up (since its last successful one), and the
/// seconds since the latest of them finished.
pub async fn pool_failures(
    c: &impl GenericClient,
    pool: &str,
) -> Result<(i64, Option<f64>), DbError> {
    let r = c
        .query_one(
            "SELECT count(*), EXTRACT(EPOCH FROM clock_timestamp() - max(finished_at))::float8
             FROM duffy_jobs
             WHERE pool = $1 AND kind = 'provision' AND state = 'failed'
               AND id > COALESCE((SELECT max(id) FROM duffy_jobs
                                  WHERE pool = $1 AND kind = 'provision' AND state = 'done'), 0)",
            &[&pool],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Lock up to `limit` unused reusable nodes (`pool` NULL) whose `data` matches every
/// `key → text` of `matching` (compat spec §8.2), skipping rows others hold.
pub async fn reusable_candidates(
    c: &impl GenericClient,
    matching: &Json,
    limit: i64,
) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT id FROM nodes n
             WHERE n.retired_at IS NULL AND n.pool IS NULL AND n.reusable AND n.state = 'unused'
               AND NOT EXISTS (SELECT 1 FROM json_each_text($1::json) m(k, v)
                               WHERE (n.data ->> m.k) IS DISTINCT FROM m.v)
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[matching, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Nodes by id, in id order (results are matched to them by position: bug 7).
pub async fn nodes_by_ids(c: &impl GenericClient, ids: &[i32]) -> Result<Vec<Node>, DbError> {
    let rows = c
        .query(
            &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ANY($1) ORDER BY id"),
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(Node::from).collect())
}

/// `deprovisioning` nodes that no open deprovision job covers, with their pool (the node's, else
/// the pool of its latest session link: upstream's worker clears `pool`), in id order.
pub async fn deprovisioning_without_job(
    c: &impl GenericClient,
) -> Result<Vec<(i32, Option<String>)>, DbError> {
    let rows = c.query(DEPROVISIONING_WITHOUT_JOB, &[]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `provisioning` nodes that no open provision job covers and that have not changed state for
/// `older_than_secs` (a crashed upstream worker or an interrupted fill), in id order.
pub async fn provisioning_without_job(
    c: &impl GenericClient,
    older_than_secs: f64,
) -> Result<Vec<(i32, Option<String>)>, DbError> {
    let rows = c
        .query(PROVISIONING_WITHOUT_JOB, &[&older_than_secs])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// `contextualizing` nodes left behind by a crashed API: not linked to an active session, or in
/// that state for more than `older_than_secs`.
pub async fn stale_contextualizing(
    c: &impl GenericClient,
    older_than_secs: f64,
) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT n.id FROM nodes n
             WHERE n.state = 'contextualizing' AND n.retired_at IS NULL
               AND (NOT EXISTS (SELECT 1 FROM sessions_nodes sn JOIN sessions s ON s.id = sn.session_id
                                WHERE sn.node_id = n.id AND s.retired_at IS NULL)
                    OR COALESCE((SELECT max(h.at) FROM duffy_node_history h WHERE h.node_id = n.id),
                                n.created_at AT TIME ZONE 'utc')
                       < clock_timestamp() - make_interval(secs => $1))
             ORDER BY n.id",
            &[&older_than_secs],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Active sessions whose `expires_at` (naive UTC) has passed, in id order.
pub async fn expired_sessions(c: &impl GenericClient) -> Result<Vec<i32>, DbError> {
    let rows = c
        .query(
            "SELECT id FROM sessions
             WHERE retired_at IS NULL AND expires_at <= (clock_timestamp() AT TIME ZONE 'utc')
             ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Seconds until the next active session expires (≤ 0: already due).
pub async fn next_expiry_secs(c: &impl GenericClient) -> Result<Option<f64>, DbError> {
    Ok(c
        .query_one(
            "SELECT EXTRACT(EPOCH FROM min(expires_at) - (clock_timestamp() AT TIME ZONE 'utc'))::float8
             FROM sessions WHERE retired_at IS NULL AND expires_at IS NOT NULL",
            &[],
        )
        .await?
        .get(0))
}

/// What a [`Listener`] hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// a notification's payload
    Notify(String),
    /// the connection is gone (why); nothing follows, the caller reconnects
    Lost(String),
}

/// A dedicated connection `LISTEN`ing on a channel: payloads arrive on `rx`, then
/// [`Heard::Lost`] when the connection is lost (the caller reconnects).
pub struct Listener {
    pub rx: mpsc::UnboundedReceiver<Heard>,
    _client: tokio_postgres::Client,
}

/// What `listener` hears next; with no listener, never (the caller's timer ends its wait).
pub async fn heard(listener: &mut Option<Listener>) -> Option<Heard> {
    match listener.as_mut() {
        Some(l) => l.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Open a [`Listener`] on `channel`.
pub async fn listen(url: &str, channel: &str) -> Result<Listener, DbError> {
    use futures_util::future::poll_fn;
    let (cfg, tls) = super::url::parse_tls(url)?;
    let target = super::describe(&cfg);
    let connector = super::tls::connector(&tls).map_err(|e| DbError::connect(&target, e))?;
    let (client, mut conn) = cfg
        .connect(connector)
        .await
        .map_err(|e| super::connect_error(&target, &e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let why = loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if tx.send(Heard::Notify(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break super::error_chain(&e),
                None => break "connection closed".to_string(),
            }
        };
        let _ = tx.send(Heard::Lost(why));
    });
    client
        .batch_execute(&format!("LISTEN {}", super::quote_ident(channel)))
        .await?;
    Ok(Listener {
        rx,
        _client: client,
    })
}
