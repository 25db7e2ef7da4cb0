//! Tenant rows. Intervals are exchanged as seconds (`float8`) so the Rust side never needs an
//! `interval` type; timestamps are upstream's naive UTC.

use chrono::NaiveDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::{DbError, GenericClient};

/// A row of `tenants` (`api_key` is the stored hash, never a usable key).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantRow {
    pub id: i32,
    pub name: String,
    pub is_admin: bool,
    pub ssh_key: String,
    pub api_key_hash: String,
    pub node_quota: Option<i32>,
    /// seconds
    pub session_lifetime: Option<f64>,
    /// seconds
    pub session_lifetime_max: Option<f64>,
    pub created_at: NaiveDateTime,
    pub retired_at: Option<NaiveDateTime>,
}

const SELECT: &str = "SELECT id, name, is_admin, ssh_key, api_key, node_quota,
       EXTRACT(EPOCH FROM session_lifetime)::float8 AS session_lifetime,
       EXTRACT(EPOCH FROM session_lifetime_max)::float8 AS session_lifetime_max,
       created_at, retired_at FROM tenants";

impl From<&Row> for TenantRow {
    fn from(r: &Row) -> Self {
        TenantRow {
            id: r.get("id"),
            name: r.get("name"),
            is_admin: r.get("is_admin"),
            ssh_key: r.get("ssh_key"),
            api_key_hash: r.get("api_key"),
            node_quota: r.get("node_quota"),
            session_lifetime: r.get("session_lifetime"),
            session_lifetime_max: r.get("session_lifetime_max"),
            created_at: r.get("created_at"),
            retired_at: r.get("retired_at"),
        }
    }
}

/// Values of a new tenant row.
#[derive(Debug, Clone)]
pub struct InsertTenant<'a> {
    pub name: &'a str,
    pub is_admin: bool,
    pub ssh_key: &'a str,
    pub api_key_hash: &'a str,
    pub node_quota: Option<i32>,
    pub session_lifetime: Option<f64>,
    pub session_lifetime_max: Option<f64>,
}

pub async fn insert(c: &impl GenericClient, t: &InsertTenant<'_>) -> Result<TenantRow, DbError> {
    let row = c
        .query_one(
            &format!(
                "WITH ins AS (
                   INSERT INTO tenants (name, is_admin, ssh_key, api_key, node_quota, session_lifetime, session_lifetime_max)
                   VALUES ($1, $2, $3, $4, $5, make_interval(secs => $6), make_interval(secs => $7))
                   RETURNING *
                 ) {} ",
                SELECT.replace("FROM tenants", "FROM ins")
            ),
            &[
                &t.name,
                &t.is_admin,
                &t.ssh_key,
                &t.api_key_hash,
                &t.node_quota,
                &t.session_lifetime,
                &t.session_lifetime_max,
            ],
        )
        .await?;
    Ok(TenantRow::from(&row))
}

pub async fn by_name(c: &impl GenericClient, name: &str) -> Result<Option<TenantRow>, DbError> {
    // typed: parse, bind and execute in one round trip (this runs for every API request)
    Ok(
        c.query_typed_opt(&format!("{SELECT} WHERE name = $1"), &[(&name, Type::TEXT)])
            .await?
            .as_ref()
            .map(TenantRow::from),
    )
}

/// Like [`by_name`] but locks the row until the end of the transaction.
pub async fn by_name_for_update(
    c: &impl GenericClient,
    name: &str,
) -> Result<Option<TenantRow>, DbError> {
    Ok(
        c.query_opt(&format!("{SELECT} WHERE name = $1 FOR UPDATE"), &[&name])
            .await?
            .as_ref()
            .map(TenantRow::from),
    )
}

/// Like [`by_id`] but locks the row until the end of the transaction.
pub async fn by_id_for_update(
    c: &impl GenericClient,
    id: i32,
) -> Result<Option<TenantRow>, DbError> {
    Ok(
        c.query_opt(&format!("{SELECT} WHERE id = $1 FOR UPDATE"), &[&id])
            .await?
            .as_ref()
            .map(TenantRow::from),
    )
}

pub async fn by_id(c: &impl GenericClient, id: i32) -> Result<Option<TenantRow>, DbError> {
    Ok(
        c.query_typed_opt(&format!("{SELECT} WHERE id = $1"), &[(&id, Type::INT4)])
            .await?
            .as_ref()
            .map(TenantRow::from),
    )
}

/// The tenant owning session `session_id` (in the same flight as the session's own queries).
pub async fn of_session(
    c: &impl GenericClient,
    session_id: i32,
) -> Result<Option<TenantRow>, DbError> {
    Ok(c.query_typed_opt(
        &format!("{SELECT} WHERE id = (SELECT tenant_id FROM sessions WHERE id = $1)"),
        &[(&session_id, Type::INT4)],
    )
    .await?
    .as_ref()
    .map(TenantRow::from))
}

/// The tenants with these ids (any order; missing ids are left out), in one query.
pub async fn by_ids(c: &impl GenericClient, ids: &[i32]) -> Result<Vec<TenantRow>, DbError> {
    Ok(c.query_typed(
        &format!("{SELECT} WHERE id = ANY($1)"),
        &[(&ids, Type::INT4_ARRAY)],
    )
    .await?
    .iter()
    .map(TenantRow::from)
    .collect())
}

/// All tenants sorted by name; active ones only unless `include_retired`.
pub async fn list(
    c: &impl GenericClient,
    include_retired: bool,
) -> Result<Vec<TenantRow>, DbError> {
    let rows = c
        .query(
            &format!("{SELECT} WHERE $1 OR retired_at IS NULL ORDER BY name"),
            &[&include_retired],
        )
        .await?;
    Ok(rows.iter().map(TenantRow::from).collect())
}

/// Changes to a tenant row (None = unchanged; `Some(None)` = clear to the default).
#[derive(Debug, Clone, Default)]
pub struct TenantUpdate {
    pub ssh_key: Option<String>,
    pub api_key_hash: Option<String>,
    pub is_admin: Option<bool>,
    pub node_quota: Option<Option<i32>>,
    pub session_lifetime: Option<Option<f64>>,
    pub session_lifetime_max: Option<Option<f64>>,
}

pub async fn update(
    c: &impl GenericClient,
    id: i32,
    u: &TenantUpdate,
) -> Result<TenantRow, DbError> {
    let row = c
        .query_one(
            &format!(
                "WITH upd AS (
                   UPDATE tenants SET
                     ssh_key = COALESCE($2, ssh_key),
                     api_key = COALESCE($3, api_key),
                     is_admin = COALESCE($4, is_admin),
                     node_quota = CASE WHEN $5 THEN $6 ELSE node_quota END,
                     session_lifetime = CASE WHEN $7 THEN make_interval(secs => $8) ELSE session_lifetime END,
                     session_lifetime_max = CASE WHEN $9 THEN make_interval(secs => $10) ELSE session_lifetime_max END
                   WHERE id = $1 RETURNING *
                 ) {}",
                SELECT.replace("FROM tenants", "FROM upd")
            ),
            &[
                &id,
                &u.ssh_key,
                &u.api_key_hash,
                &u.is_admin,
                &u.node_quota.is_some(),
                &u.node_quota.flatten(),
                &u.session_lifetime.is_some(),
                &u.session_lifetime.flatten(),
                &u.session_lifetime_max.is_some(),
                &u.session_lifetime_max.flatten(),
            ],
        )
        .await?;
    Ok(TenantRow::from(&row))
}

/// Retire (`retired_at = now`, and every active session of the tenant expires now) or
/// unretire (`retired_at = NULL`). Returns the row and the number of sessions set to expire.
pub async fn set_retired(
    c: &impl GenericClient,
    id: i32,
    retired: bool,
) -> Result<(TenantRow, u64), DbError> {
    let row = c
        .query_one(
            &format!(
                "WITH upd AS (
                   UPDATE tenants SET retired_at = CASE WHEN $2 THEN COALESCE(retired_at, now() AT TIME ZONE 'utc') ELSE NULL END
                   WHERE id = $1 RETURNING *
                 ) {}",
                SELECT.replace("FROM tenants", "FROM upd")
            ),
            &[&id, &retired],
        )
        .await?;
    let expired = if retired {
        c.execute(
            "UPDATE sessions SET expires_at = now() AT TIME ZONE 'utc'
             WHERE tenant_id = $1 AND retired_at IS NULL",
            &[&id],
        )
        .await?
    } else {
        0
    };
    Ok((TenantRow::from(&row), expired))
}
