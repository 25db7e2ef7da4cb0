//! The event outbox (`duffy_events`, `duffy_event_commits`, `duffy_event_cursor`, migration
//! 0004): triggers write one row per node or session transition in the changing transaction and
//! number each such transaction at commit (`seq`, commit order); the bus (`crate::bus`) reads
//! whole transactions after its cursor under the cursor's row lock, publishes them, then moves
//! the cursor and deletes what it delivered — one transaction.

use chrono::NaiveDateTime;

use super::{DbError, GenericClient};

/// The channel the commit trigger NOTIFYs (payload empty) when events were committed.
pub const CHANNEL: &str = "duffy_outbox";

/// The cursor of the beanstalkd bus.
pub const BEANSTALKD: &str = "beanstalkd";

/// One undelivered event.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// commit sequence number of its transaction (non-decreasing in delivery order)
    pub seq: i64,
    /// unique event id
    pub id: i64,
    /// when the change was written (UTC)
    pub at: NaiveDateTime,
    pub kind: String,
    pub node_id: Option<i32>,
    pub session_id: Option<i32>,
    pub tenant_id: Option<i32>,
    pub pool: Option<String>,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
}

/// Start collecting events for bus `name` (idempotent): its cursor is created at the current
/// end, so the bus publishes what is committed from now on. Returns the cursor.
pub async fn enable(c: &impl GenericClient, name: &str) -> Result<i64, DbError> {
    c.execute(
        "INSERT INTO duffy_event_cursor (name, seq)
         VALUES ($1, COALESCE((SELECT max(seq) FROM duffy_event_commits), 0))
         ON CONFLICT (name) DO NOTHING",
        &[&name],
    )
    .await?;
    Ok(c.query_one(
        "SELECT seq FROM duffy_event_cursor WHERE name = $1",
        &[&name],
    )
    .await?
    .get(0))
}

/// Bus `name`'s cursor, its row locked until the end of the caller's transaction (one
/// deliverer at a time: a second one waits here, then reads the moved cursor). None: the bus
/// was never enabled.
pub async fn lock_cursor(c: &impl GenericClient, name: &str) -> Result<Option<i64>, DbError> {
    Ok(c.query_opt(
        "SELECT seq FROM duffy_event_cursor WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await?
    .map(|r| r.get(0)))
}

/// The events of the transactions committed after `after` up to `upto` ([`last_commit`]: a
/// later statement may see more commits), in commit order, then in the order written.
pub async fn pending(
    c: &impl GenericClient,
    after: i64,
    upto: i64,
) -> Result<Vec<OutboxEvent>, DbError> {
    let rows = c
        .query(
            "WITH t AS (
               SELECT seq, xid FROM duffy_event_commits WHERE seq > $1 AND seq <= $2
             )
             SELECT t.seq, e.id, (e.at AT TIME ZONE 'utc') AS at, e.kind, e.node_id, e.session_id,
                    e.tenant_id, e.pool, e.from_state, e.to_state, e.actor, e.reason
             FROM t JOIN duffy_events e ON e.xid = t.xid ORDER BY t.seq, e.id",
            &[&after, &upto],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| OutboxEvent {
            seq: r.get("seq"),
            id: r.get("id"),
            at: r.get("at"),
            kind: r.get("kind"),
            node_id: r.get("node_id"),
            session_id: r.get("session_id"),
            tenant_id: r.get("tenant_id"),
            pool: r.get("pool"),
            from_state: r.get("from_state"),
            to_state: r.get("to_state"),
            actor: r.get("actor"),
            reason: r.get("reason"),
        })
        .collect())
}

/// The highest commit sequence number after `after` among the first `max_commits` (what
/// [`pending`] covers, events or not): None when nothing was committed after `after`.
pub async fn last_commit(
    c: &impl GenericClient,
    after: i64,
    max_commits: i64,
) -> Result<Option<i64>, DbError> {
    Ok(c.query_one(
        "SELECT max(seq) FROM (SELECT seq FROM duffy_event_commits WHERE seq > $1 ORDER BY seq LIMIT $2) t",
        &[&after, &max_commits],
    )
    .await?
    .get(0))
}

/// Move bus `name`'s cursor to `seq` and delete the events delivered up to it.
pub async fn advance(c: &impl GenericClient, name: &str, seq: i64) -> Result<(), DbError> {
    c.execute(
        "UPDATE duffy_event_cursor SET seq = $2, updated_at = clock_timestamp() WHERE name = $1",
        &[&name, &seq],
    )
    .await?;
    c.execute(
        "DELETE FROM duffy_events e USING duffy_event_commits t WHERE e.xid = t.xid AND t.seq <= $1",
        &[&seq],
    )
    .await?;
    c.execute("DELETE FROM duffy_event_commits WHERE seq <= $1", &[&seq])
        .await?;
    Ok(())
}

/// Committed transactions not delivered yet by bus `name`.
pub async fn backlog(c: &impl GenericClient, name: &str) -> Result<i64, DbError> {
    Ok(c.query_one(
        "SELECT count(*) FROM duffy_event_commits
         WHERE seq > COALESCE((SELECT seq FROM duffy_event_cursor WHERE name = $1), 0)",
        &[&name],
    )
    .await?
    .get(0))
}
