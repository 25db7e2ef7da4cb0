//! Notifications between duffy processes over PostgreSQL `LISTEN`/`NOTIFY` (channel
//! `events.channel`, default `duffy_events`). Sent inside the writing transaction, so they are
//! delivered exactly when (and only if) the change commits. The scheduler listens to react at
//! once instead of waiting for its next interval.

use serde::{Deserialize, Serialize};

use crate::db::{DbError, GenericClient};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// nodes were taken from these pools: refill them
    SessionCreated { session_id: i32, pools: Vec<String> },
    /// these nodes must be deprovisioned
    SessionRetired { session_id: i32, node_ids: Vec<i32> },
    /// a creation failed after reserving nodes: these pools may need refilling
    SessionFailed { pools: Vec<String> },
    /// an operator changed these nodes' states (e.g. to `deprovisioning` or `failed`)
    NodesChanged {
        node_ids: Vec<i32>,
        pools: Vec<String>,
    },
}

/// Queue `event` on `channel`; delivered when the surrounding transaction commits.
pub async fn notify(c: &impl GenericClient, channel: &str, event: &Event) -> Result<(), DbError> {
    let payload = serde_json::to_string(event).expect("event serialises");
    c.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
        .await?;
    Ok(())
}
