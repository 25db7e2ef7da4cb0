//! The event bus: every node and session transition, published as one JSON job to a beanstalkd
//! tube (`events.beanstalkd`), in commit order, at least once.
//!
//! The events are written by triggers into the outbox (`db::outbox`, migration 0004) in the
//! transaction of the change, so none is lost and none is published for a change that rolled
//! back. [`run`] (in `duffy scheduler`) delivers them after commit: under the outbox cursor's
//! row lock (one deliverer at a time across processes) it reads whole transactions after the
//! cursor in commit order, `put`s each event, and once beanstalkd answered `INSERTED` for all
//! of them moves the cursor and deletes them in one transaction. A crash between a `put` and
//! that commit publishes those events again after the restart: consumers dedupe by `id`.
//! Woken by the commit trigger's NOTIFY, polling every `poll-interval` as a fallback; while
//! beanstalkd is out of reach it backs off (≤ 5 s), logs the outage once and resumes from the
//! cursor when it answers again.

pub mod beanstalkd;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::BeanstalkdConfig;
use crate::db::{jobs, outbox, Db, DbError};
use beanstalkd::{BeanstalkdError, Client, Put};

/// Transactions read per delivery batch.
const BATCH: i64 = 200;
/// Back-off bounds while beanstalkd or the database is out of reach.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a delivery stopped.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Beanstalkd(#[from] BeanstalkdError),
    #[error("event {id} is {size} bytes even without its reason, more than events.beanstalkd.max-job-size ({max})")]
    TooBig { id: i64, size: usize, max: usize },
    #[error("beanstalkd {addr} refused a job of {size} bytes (JOB_TOO_BIG): its max job size (-z) is smaller than events.beanstalkd.max-job-size ({max}); lower that or raise -z")]
    ServerTooSmall {
        addr: String,
        size: usize,
        max: usize,
    },
    #[error("the event bus is not enabled in this database (no outbox cursor)")]
    NotEnabled,
}

impl BusError {
    fn is_unavailable(&self) -> bool {
        match self {
            BusError::Db(e) => e.is_unavailable(),
            BusError::Beanstalkd(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// The JSON of one job (README, "Operating duffy → Events").
#[derive(Debug, Serialize)]
struct Wire<'a> {
    id: i64,
    seq: i64,
    time: String,
    kind: &'a str,
    node_id: Option<i32>,
    session_id: Option<i32>,
    tenant_id: Option<i32>,
    pool: Option<&'a str>,
    from_state: Option<&'a str>,
    to_state: Option<&'a str>,
    actor: &'a str,
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reason_truncated: bool,
}

/// The job body of `e`, at most `max` bytes: a longer `reason` is cut (at a character
/// boundary) and `reason_truncated` set.
pub fn job_body(e: &outbox::OutboxEvent, max: usize) -> Result<Vec<u8>, BusError> {
    let mut w = Wire {
        id: e.id,
        seq: e.seq,
        time: crate::timefmt::iso_z(&e.at),
        kind: &e.kind,
        node_id: e.node_id,
        session_id: e.session_id,
        tenant_id: e.tenant_id,
        pool: e.pool.as_deref(),
        from_state: e.from_state.as_deref(),
        to_state: e.to_state.as_deref(),
        actor: &e.actor,
        reason: e.reason.as_deref(),
        reason_truncated: false,
    };
    let body = serde_json::to_vec(&w).expect("event serialises");
    if body.len() <= max {
        return Ok(body);
    }
    let full = e.reason.as_deref().unwrap_or("");
    w.reason = Some("");
    w.reason_truncated = true;
    let bare = serde_json::to_vec(&w).expect("event serialises").len();
    if bare > max {
        return Err(BusError::TooBig {
            id: e.id,
            size: bare,
            max,
        });
    }
    // JSON escaping can grow a character to 6 bytes (`\u001f`): the longest prefix that fits,
    // by bisection over the character boundaries within the room left
    let room = max - bare;
    let cuts: Vec<usize> = full
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(full.len()))
        .take_while(|i| *i <= room)
        .collect();
    // cuts[lo] fits (the empty prefix does: bare <= max); cuts[hi + 1..] do not
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        w.reason = Some(&full[..cuts[mid]]);
        if serde_json::to_vec(&w).expect("event serialises").len() <= max {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    w.reason = Some(&full[..cuts[lo]]);
    Ok(serde_json::to_vec(&w).expect("event serialises"))
}

/// A publisher: the configuration and its beanstalkd connection (opened when needed, dropped
/// after an error).
pub struct Publisher {
    cfg: BeanstalkdConfig,
    client: Option<Client>,
}

impl Publisher {
    pub fn new(cfg: BeanstalkdConfig) -> Publisher {
        Publisher { cfg, client: None }
    }

    async fn client(&mut self) -> Result<&mut Client, BeanstalkdError> {
        if self.client.is_none() {
            let mut c = Client::connect(&self.cfg.host_port(), self.cfg.timeout.0).await?;
            c.use_tube(&self.cfg.tube).await?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    async fn put(&mut self, body: &[u8]) -> Result<Put, BusError> {
        let (pri, ttr) = (self.cfg.priority, self.cfg.ttr);
        let r = self.client().await?.put(pri, ttr, body).await;
        if r.is_err() {
            // a refusal leaves the connection usable, but a fresh one costs nothing
            self.client = None;
        }
        match r {
            Err(BeanstalkdError::Refused { addr, reply, .. }) if reply == "JOB_TOO_BIG" => {
                Err(BusError::ServerTooSmall {
                    addr,
                    size: body.len(),
                    max: self.cfg.max_job_size,
                })
            }
            r => Ok(r?),
        }
    }

    /// Deliver one batch of committed transactions after the cursor; the number of events
    /// published (0: nothing was waiting).
    pub async fn deliver_batch(&mut self, db: &Db) -> Result<usize, BusError> {
        let mut conn = db.get().await?;
        let tx = conn.transaction().await.map_err(DbError::from)?;
        let Some(cursor) = outbox::lock_cursor(&*tx, outbox::BEANSTALKD).await? else {
            return Err(BusError::NotEnabled);
        };
        let Some(last) = outbox::last_commit(&*tx, cursor, BATCH).await? else {
            return Ok(0);
        };
        let events = outbox::pending(&*tx, cursor, last).await?;
        let max = self.cfg.max_job_size;
        // the transactions published completely so far (a failure keeps those)
        let mut done = cursor;
        let mut sent = 0;
        let mut i = 0;
        while i < events.len() {
            let seq = events[i].seq;
            let end = events[i..]
                .iter()
                .position(|e| e.seq != seq)
                .map_or(events.len(), |n| i + n);
            for e in &events[i..end] {
                let r = match job_body(e, max) {
                    Ok(body) => self.put(&body).await,
                    Err(err) => Err(err),
                };
                match r {
                    Ok(Put::Inserted(_)) => {}
                    Ok(Put::Buried(job)) => tracing::warn!(
                        event = e.id,
                        job,
                        "beanstalkd buried the event's job (out of memory): `kick` it"
                    ),
                    Err(err) => {
                        if done > cursor {
                            outbox::advance(&*tx, outbox::BEANSTALKD, done).await?;
                            tx.commit().await.map_err(DbError::from)?;
                        }
                        return Err(err);
                    }
                }
                sent += 1;
            }
            done = seq;
            i = end;
        }
        outbox::advance(&*tx, outbox::BEANSTALKD, last).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(sent)
    }

    /// Deliver everything committed so far (batch after batch); the number of events.
    pub async fn deliver_all(&mut self, db: &Db) -> Result<usize, BusError> {
        let mut total = 0;
        loop {
            let n = self.deliver_batch(db).await?;
            total += n;
            if n == 0 {
                // a batch of event-less commits also returns 0 after moving the cursor: look
                // once more only when something is left
                let c = db.get().await?;
                if outbox::backlog(&**c, outbox::BEANSTALKD).await? == 0 {
                    return Ok(total);
                }
            }
        }
    }
}

/// Start collecting events for the bus in this database (idempotent; `serve` and `scheduler`
/// call it at start when `events.beanstalkd` is configured).
pub async fn enable(db: &Db) -> Result<(), DbError> {
    let c = db.get().await?;
    outbox::enable(&**c, outbox::BEANSTALKD).await?;
    Ok(())
}

/// Deliver events until `stop` turns true: at start, on every NOTIFY of the outbox, every
/// `poll-interval`; backing off while beanstalkd or the database is out of reach (one log line
/// when an outage starts, one when it ends).
pub async fn run(
    db: Db,
    url: String,
    cfg: BeanstalkdConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let addr = cfg.host_port();
    let tube = cfg.tube.clone();
    let poll = cfg.poll_interval.0;
    let mut p = Publisher::new(cfg);
    let mut listener: Option<jobs::Listener> = None;
    let mut outage: Option<(Instant, String)> = None;
    let mut retry = RETRY_MIN;
    tracing::info!("event bus: publishing to beanstalkd {addr}, tube {tube}");
    loop {
        if listener.is_none() {
            // missed NOTIFYs do not matter: every pass reads from the cursor
            listener = jobs::listen(&url, outbox::CHANNEL).await.ok();
        }
        let wait = match p.deliver_all(&db).await {
            Ok(n) => {
                if let Some((since, _)) = outage.take() {
                    tracing::warn!(
                        "event bus: delivering again after {:.1?}; {n} waiting events published",
                        since.elapsed()
                    );
                } else if n > 0 {
                    tracing::debug!("event bus: {n} events published");
                }
                retry = RETRY_MIN;
                poll
            }
            Err(BusError::NotEnabled) => {
                // a database migrated back or the cursor deleted by hand: enable again
                if let Err(e) = enable(&db).await {
                    tracing::debug!("event bus: enabling: {e}");
                }
                RETRY_MIN
            }
            Err(e) => {
                let why = e.to_string();
                match &outage {
                    None => {
                        let waiting = match db.get().await {
                            Ok(c) => outbox::backlog(&**c, outbox::BEANSTALKD)
                                .await
                                .map(|n| format!("{n} transactions' events waiting"))
                                .unwrap_or_else(|_| "events wait in the outbox".into()),
                            Err(_) => "events wait in the outbox".into(),
                        };
                        tracing::error!(
                            "event bus: {why}; {waiting}, retrying every {RETRY_MAX:?} at most until it works"
                        );
                        outage = Some((Instant::now(), why));
                    }
                    Some((_, first)) if *first != why && !e.is_unavailable() => {
                        tracing::error!("event bus: {why}");
                        outage = Some((outage.take().expect("outage").0, why));
                    }
                    Some(_) => tracing::debug!("event bus: still failing: {why}"),
                }
                let w = retry;
                retry = (retry * 2).min(RETRY_MAX);
                w
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                heard = jobs::heard(&mut listener) => match heard {
                    Some(jobs::Heard::Notify(_)) => {
                        // all NOTIFYs waiting are one wake-up
                        while let Some(Ok(jobs::Heard::Notify(_))) = listener.as_mut().map(|l| l.rx.try_recv()) {}
                        if outage.is_none() {
                            break;
                        }
                    }
                    _ => {
                        listener = None;
                        break;
                    }
                },
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: Option<&str>) -> outbox::OutboxEvent {
        outbox::OutboxEvent {
            seq: 3,
            id: 7,
            at: chrono::NaiveDate::from_ymd_opt(2026, 12, 3)
                .unwrap()
                .and_hms_micro_opt(18, 0, 1, 250)
                .unwrap(),
            kind: "node.transition".into(),
            node_id: Some(5),
            session_id: Some(2),
            tenant_id: Some(1),
            pool: Some("lab".into()),
            from_state: Some("ready".into()),
            to_state: Some("contextualizing".into()),
            actor: "api".into(),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn body_is_the_documented_json() {
        let b = job_body(&event(Some("session created")), 65535).unwrap();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"{"id":7,"seq":3,"time":"2026-12-03T18:00:01.000250Z","kind":"node.transition","node_id":5,"session_id":2,"tenant_id":1,"pool":"lab","from_state":"ready","to_state":"contextualizing","actor":"api","reason":"session created"}"#
        );
    }

    #[test]
    fn a_long_reason_is_cut_to_fit() {
        for fill in ["x", "é", "\u{1f}", "€"] {
            let long = fill.repeat(5000);
            let e = event(Some(&long));
            let b = job_body(&e, 1024).unwrap();
            assert!(b.len() <= 1024, "{fill}: {}", b.len());
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["reason_truncated"], true);
            let r = v["reason"].as_str().unwrap();
            assert!(long.starts_with(r) && r.len() > 100, "{fill}: {}", r.len());
            assert!(b.len() > 1024 - 8, "{fill}: room left unused: {}", b.len());
        }
        // short enough: untouched, no flag
        let b = job_body(&event(Some("boom")), 1024).unwrap();
        assert!(!String::from_utf8(b).unwrap().contains("truncated"));
    }

    #[test]
    fn an_event_too_big_without_reason_is_an_error_naming_the_key() {
        let mut e = event(None);
        e.pool = Some("p".repeat(2000));
        let err = job_body(&e, 1024).unwrap_err().to_string();
        assert!(err.contains("events.beanstalkd.max-job-size"), "{err}");
    }
}
