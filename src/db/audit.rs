//! `duffy_audit_log`: append-only record of changes to tenants, sessions, pools and nodes
//! (node *state* changes go to `duffy_node_history`, written by the transition itself).

use serde_json::Value as Json;

use super::{DbError, GenericClient};

/// What an audit row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Tenant,
    Session,
    Node,
    Pool,
}

impl Entity {
    fn as_str(self) -> &'static str {
        match self {
            Entity::Tenant => "tenant",
            Entity::Session => "session",
            Entity::Node => "node",
            Entity::Pool => "pool",
        }
    }
}

/// Append one audit row. `detail` must never hold secrets (keys, passwords).
pub async fn record(
    c: &impl GenericClient,
    entity: Entity,
    entity_id: Option<i32>,
    action: &str,
    actor: &str,
    detail: Json,
) -> Result<(), DbError> {
    c.execute(
        "INSERT INTO duffy_audit_log (entity, entity_id, action, actor, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&entity.as_str(), &entity_id, &action, &actor, &detail],
    )
    .await?;
    Ok(())
}

/// Actions recorded for an entity, oldest first: `(action, actor, detail)`.
pub async fn list(
    c: &impl GenericClient,
    entity: Entity,
    entity_id: i32,
) -> Result<Vec<(String, String, Json)>, DbError> {
    let rows = c
        .query(
            "SELECT action, actor, detail FROM duffy_audit_log WHERE entity = $1 AND entity_id = $2 ORDER BY id",
            &[&entity.as_str(), &entity_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
