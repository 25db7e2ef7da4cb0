//! Tenants: the domain operations behind `duffy admin`, the REST API's `/tenants` and the
//! `duffy_tenant` module — one implementation for all of them.
//!
//! Rules (compat spec §1.3, §4.9): names are unique forever; API keys are random UUIDv4 shown
//! once; SSH keys are validated; quotas are > 0; lifetimes are config durations; effective
//! values fall back to `defaults.*`. Every change is one transaction with an audit row.

use std::time::Duration;

use serde_json::{json, Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::config::Defaults;
use crate::db::tenants::{self as q, InsertTenant, TenantRow, TenantUpdate};
use crate::db::{audit, Db, DbError};
use crate::sshkeys::{self, SshKeyError};
use crate::{apikey, duration, timefmt};

/// Mask shown instead of SSH keys and unchanged API keys: the config's (one mask for the API
/// and `config check`).
pub use crate::config::secrets::MASK;

#[derive(Debug, Error)]
pub enum TenantError {
    #[error("tenant {0:?} not found")]
    NotFound(String),
    #[error("tenant {0:?} already exists")]
    Exists(String),
    #[error("tenant {name} (id={id}) is retired")]
    Retired { name: String, id: i32 },
    #[error(transparent)]
    SshKey(#[from] SshKeyError),
    #[error("{field}: {msg}")]
    Invalid { field: &'static str, msg: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for TenantError {
    fn from(e: tokio_postgres::Error) -> Self {
        TenantError::Db(e.into())
    }
}

/// A tenant with its effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub row: TenantRow,
    pub effective_node_quota: Option<u32>,
    pub effective_session_lifetime: Option<Duration>,
    pub effective_session_lifetime_max: Option<Duration>,
}

fn secs(d: Option<f64>) -> Option<Duration> {
    d.and_then(|s| Duration::try_from_secs_f64(s).ok())
}

impl Tenant {
    pub fn new(row: TenantRow, defaults: &Defaults) -> Tenant {
        Tenant {
            effective_node_quota: row
                .node_quota
                .map(|q| q.max(0) as u32)
                .or(defaults.node_quota),
            effective_session_lifetime: secs(row.session_lifetime)
                .or(defaults.session_lifetime.map(|d| d.0)),
            effective_session_lifetime_max: secs(row.session_lifetime_max)
                .or(defaults.session_lifetime_max.map(|d| d.0)),
            row,
        }
    }

    pub fn active(&self) -> bool {
        self.row.retired_at.is_none()
    }

    pub fn session_lifetime(&self) -> Option<Duration> {
        secs(self.row.session_lifetime)
    }

    pub fn session_lifetime_max(&self) -> Option<Duration> {
        secs(self.row.session_lifetime_max)
    }

    /// The API's `TenantModel`, fields in upstream's order. `ssh_key` is masked unless
    /// `show_ssh_key`; `api_key` is appended when given (create/update responses).
    pub fn to_json(&self, show_ssh_key: bool, api_key: Option<Value>) -> Value {
        let r = &self.row;
        let opt_secs = |d: Option<Duration>| d.map(duration::seconds_json).unwrap_or(Value::Null);
        let float_secs =
            |d: Option<Duration>| d.map(|d| json!(d.as_secs_f64())).unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert(
            "retired_at".into(),
            json!(r.retired_at.as_ref().map(timefmt::iso_z)),
        );
        m.insert("active".into(), json!(self.active()));
        m.insert("created_at".into(), json!(timefmt::iso_z(&r.created_at)));
        m.insert("name".into(), json!(r.name));
        m.insert("is_admin".into(), json!(r.is_admin));
        m.insert(
            "ssh_key".into(),
            json!(if show_ssh_key {
                r.ssh_key.as_str()
            } else {
                MASK
            }),
        );
        m.insert("node_quota".into(), json!(r.node_quota));
        m.insert("session_lifetime".into(), opt_secs(self.session_lifetime()));
        m.insert(
            "session_lifetime_max".into(),
            opt_secs(self.session_lifetime_max()),
        );
        m.insert("id".into(), json!(r.id));
        m.insert(
            "effective_node_quota".into(),
            json!(self.effective_node_quota),
        );
        m.insert(
            "effective_session_lifetime".into(),
            float_secs(self.effective_session_lifetime),
        );
        m.insert(
            "effective_session_lifetime_max".into(),
            float_secs(self.effective_session_lifetime_max),
        );
        if let Some(k) = api_key {
            m.insert("api_key".into(), k);
        }
        Value::Object(m)
    }
}

/// Check a tenant name: non-empty, usable as an HTTP Basic user name.
pub fn validate_name(name: &str) -> Result<(), TenantError> {
    let bad = |msg: &str| TenantError::Invalid {
        field: "name",
        msg: msg.to_string(),
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name.contains(':') {
        return Err(bad("must not contain ':' (it is the HTTP Basic user name)"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain whitespace or control characters"));
    }
    if name.len() > 255 {
        return Err(bad("must be at most 255 bytes"));
    }
    Ok(())
}

/// Longest session lifetime (and lifetime maximum) a tenant can have: 100 years. Longer values
/// overflow PostgreSQL's `interval` arithmetic (`make_interval` wraps silently) and end past
/// the year 9999 that clients can parse.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

fn lifetime(field: &'static str, d: Option<Duration>) -> Result<(), TenantError> {
    match d {
        Some(d) if d > MAX_LIFETIME => Err(TenantError::Invalid {
            field,
            msg: format!(
                "{} seconds is too long (at most {} seconds, 100 years)",
                d.as_secs(),
                MAX_LIFETIME.as_secs()
            ),
        }),
        _ => Ok(()),
    }
}

fn quota(q: Option<u32>) -> Result<Option<i32>, TenantError> {
    match q {
        None => Ok(None),
        Some(0) => Err(TenantError::Invalid {
            field: "node_quota",
            msg: "expected an integer > 0, got 0".into(),
        }),
        Some(n) => i32::try_from(n)
            .map(Some)
            .map_err(|_| TenantError::Invalid {
                field: "node_quota",
                msg: format!("{n} is too large"),
            }),
    }
}

/// Hash a key off the async executor (bcrypt cost 12 takes ~0.3 s of CPU).
async fn hash_key(key: Uuid) -> String {
    tokio::task::spawn_blocking(move || apikey::hash(&key))
        .await
        .expect("bcrypt task")
}

/// A tenant to create.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    pub name: String,
    pub ssh_key: String,
    pub is_admin: bool,
    pub node_quota: Option<u32>,
    pub session_lifetime: Option<Duration>,
    pub session_lifetime_max: Option<Duration>,
}

/// Create a tenant with a fresh API key; returns the tenant and the key (shown once).
pub async fn create(
    db: &Db,
    defaults: &Defaults,
    t: &NewTenant,
    actor: &str,
) -> Result<(Tenant, Uuid), TenantError> {
    create_with_key(db, defaults, t, None, actor).await
}

/// Create a tenant with the given API key (e.g. an existing legacy key; the `duffy_tenant`
/// module's `api_key`), or a fresh one when `None`; returns the tenant and the key.
pub async fn create_with_key(
    db: &Db,
    defaults: &Defaults,
    t: &NewTenant,
    api_key: Option<Uuid>,
    actor: &str,
) -> Result<(Tenant, Uuid), TenantError> {
    validate_new(t)?;
    let key = api_key.unwrap_or_else(apikey::generate);
    let hash = hash_key(key).await;
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    let row = insert_in(&*tx, t, &hash, actor).await?;
    tx.commit().await?;
    Ok((Tenant::new(row, defaults), key))
}

/// Check a tenant to create without writing anything (what [`insert_in`] checks first).
pub fn validate_new(t: &NewTenant) -> Result<(), TenantError> {
    validate_name(&t.name)?;
    sshkeys::validate(&t.ssh_key)?;
    quota(t.node_quota)?;
    lifetime("session_lifetime", t.session_lifetime)?;
    lifetime("session_lifetime_max", t.session_lifetime_max)?;
    Ok(())
}

/// Insert tenant `t` whose API key hashes to `api_key_hash` ([`apikey::hash`]), with its audit
/// row, inside the caller's transaction `c` (`duffy import-legacy` makes many in one).
pub async fn insert_in(
    c: &impl crate::db::GenericClient,
    t: &NewTenant,
    api_key_hash: &str,
    actor: &str,
) -> Result<TenantRow, TenantError> {
    validate_new(t)?;
    let ssh_key = sshkeys::validate(&t.ssh_key)?;
    let row = match q::insert(
        c,
        &InsertTenant {
            name: &t.name,
            is_admin: t.is_admin,
            ssh_key: &ssh_key,
            api_key_hash,
            node_quota: quota(t.node_quota)?,
            session_lifetime: t.session_lifetime.map(|d| d.as_secs_f64()),
            session_lifetime_max: t.session_lifetime_max.map(|d| d.as_secs_f64()),
        },
    )
    .await
    {
        Ok(row) => row,
        Err(e) if e.unique_violation().is_some() => {
            return Err(TenantError::Exists(t.name.clone()))
        }
        Err(e) => return Err(e.into()),
    };
    audit::record(
        c,
        audit::Entity::Tenant,
        Some(row.id),
        "create",
        actor,
        json!({"name": row.name, "is_admin": row.is_admin, "node_quota": row.node_quota}),
    )
    .await?;
    Ok(row)
}

/// One tenant by name.
pub async fn get(db: &Db, defaults: &Defaults, name: &str) -> Result<Tenant, TenantError> {
    let conn = db.get().await?;
    q::by_name(&**conn, name)
        .await?
        .map(|r| Tenant::new(r, defaults))
        .ok_or_else(|| TenantError::NotFound(name.to_string()))
}

/// Tenants sorted by name.
pub async fn list(
    db: &Db,
    defaults: &Defaults,
    include_retired: bool,
) -> Result<Vec<Tenant>, TenantError> {
    let conn = db.get().await?;
    Ok(q::list(&**conn, include_retired)
        .await?
        .into_iter()
        .map(|r| Tenant::new(r, defaults))
        .collect())
}

/// How an update changes the API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyChange {
    /// a new random key, returned in clear
    Reset,
    /// this key (e.g. a legacy cico key), not echoed back
    Set(Uuid),
}

/// Changes to a tenant (None = unchanged; `Some(None)` = clear to the default).
#[derive(Debug, Clone, Default)]
pub struct TenantChanges {
    pub ssh_key: Option<String>,
    pub api_key: Option<ApiKeyChange>,
    pub is_admin: Option<bool>,
    pub node_quota: Option<Option<u32>>,
    pub session_lifetime: Option<Option<Duration>>,
    pub session_lifetime_max: Option<Option<Duration>>,
}

impl TenantChanges {
    pub fn is_empty(&self) -> bool {
        self.ssh_key.is_none()
            && self.api_key.is_none()
            && self.is_admin.is_none()
            && self.node_quota.is_none()
            && self.session_lifetime.is_none()
            && self.session_lifetime_max.is_none()
    }
}

/// Update a tenant. A retired tenant cannot be updated (upstream: 422). Returns the tenant and
/// the new key when it was reset.
pub async fn update(
    db: &Db,
    defaults: &Defaults,
    name: &str,
    ch: &TenantChanges,
    actor: &str,
) -> Result<(Tenant, Option<Uuid>), TenantError> {
    update_unretiring(db, defaults, name, false, ch, actor).await
}

/// [`update`], unretiring the tenant first when `unretire` (the `duffy_tenant` module's
/// `state: present` on a retired tenant): one transaction, so a change that fails leaves the
/// tenant retired. `ch` may be empty then.
pub async fn update_unretiring(
    db: &Db,
    defaults: &Defaults,
    name: &str,
    unretire: bool,
    ch: &TenantChanges,
    actor: &str,
) -> Result<(Tenant, Option<Uuid>), TenantError> {
    let ssh_key = match &ch.ssh_key {
        Some(k) if !k.trim().is_empty() => Some(sshkeys::validate(k)?),
        Some(_) => {
            return Err(TenantError::Invalid {
                field: "ssh_key",
                msg: "must not be empty".into(),
            })
        }
        None => None,
    };
    let node_quota = match ch.node_quota {
        Some(q) => Some(quota(q)?),
        None => None,
    };
    lifetime("session_lifetime", ch.session_lifetime.flatten())?;
    lifetime("session_lifetime_max", ch.session_lifetime_max.flatten())?;
    let (new_key, hash) = match ch.api_key {
        Some(ApiKeyChange::Reset) => {
            let k = apikey::generate();
            (Some(k), Some(hash_key(k).await))
        }
        Some(ApiKeyChange::Set(k)) => (None, Some(hash_key(k).await)),
        None => (None, None),
    };
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    let Some(mut cur) = q::by_name_for_update(&*tx, name).await? else {
        return Err(TenantError::NotFound(name.to_string()));
    };
    if cur.retired_at.is_some() {
        if !unretire {
            return Err(TenantError::Retired {
                name: cur.name,
                id: cur.id,
            });
        }
        cur = set_retired_locked(&*tx, &cur, false, actor).await?;
    }
    if ch.is_empty() {
        tx.commit().await?;
        return Ok((Tenant::new(cur, defaults), None));
    }
    let row = write_changes(&*tx, cur.id, ch, ssh_key, node_quota, hash, actor).await?;
    tx.commit().await?;
    Ok((Tenant::new(row, defaults), new_key))
}

/// Change the SSH key and node quota of tenant `cur`, whose row the caller's transaction `c`
/// holds locked ([`crate::db::tenants::by_name_for_update`]): validated as [`update`] does,
/// with its audit row. `duffy import-legacy` brings v2's `userkeys`/`limitnodes` this way.
pub async fn update_in(
    c: &impl crate::db::GenericClient,
    cur: &TenantRow,
    ssh_key: Option<&str>,
    node_quota: Option<Option<u32>>,
    actor: &str,
) -> Result<TenantRow, TenantError> {
    let ch = TenantChanges {
        ssh_key: ssh_key.map(str::to_string),
        node_quota,
        ..Default::default()
    };
    let ssh_key = ssh_key.map(sshkeys::validate).transpose()?;
    let node_quota = node_quota.map(quota).transpose()?;
    write_changes(c, cur.id, &ch, ssh_key, node_quota, None, actor).await
}

/// The update of [`update_unretiring`] and [`update_in`]: values already validated.
async fn write_changes(
    c: &impl crate::db::GenericClient,
    id: i32,
    ch: &TenantChanges,
    ssh_key: Option<String>,
    node_quota: Option<Option<i32>>,
    hash: Option<String>,
    actor: &str,
) -> Result<TenantRow, TenantError> {
    let row = q::update(
        c,
        id,
        &TenantUpdate {
            ssh_key,
            api_key_hash: hash,
            is_admin: ch.is_admin,
            node_quota,
            session_lifetime: ch.session_lifetime.map(|o| o.map(|d| d.as_secs_f64())),
            session_lifetime_max: ch.session_lifetime_max.map(|o| o.map(|d| d.as_secs_f64())),
        },
    )
    .await?;
    let mut changed = Vec::new();
    for (f, set) in [
        ("ssh_key", ch.ssh_key.is_some()),
        ("api_key", ch.api_key.is_some()),
        ("is_admin", ch.is_admin.is_some()),
        ("node_quota", ch.node_quota.is_some()),
        ("session_lifetime", ch.session_lifetime.is_some()),
        ("session_lifetime_max", ch.session_lifetime_max.is_some()),
    ] {
        if set {
            changed.push(f);
        }
    }
    audit::record(
        c,
        audit::Entity::Tenant,
        Some(row.id),
        "update",
        actor,
        json!({"fields": changed}),
    )
    .await?;
    Ok(row)
}

/// Retire (`retired = true`: the tenant's active sessions expire now) or unretire a tenant.
pub async fn set_retired(
    db: &Db,
    defaults: &Defaults,
    name: &str,
    retired: bool,
    actor: &str,
) -> Result<Tenant, TenantError> {
    let mut conn = db.get().await?;
    let tx = conn.transaction().await?;
    let Some(cur) = q::by_name_for_update(&*tx, name).await? else {
        return Err(TenantError::NotFound(name.to_string()));
    };
    let row = set_retired_locked(&*tx, &cur, retired, actor).await?;
    tx.commit().await?;
    Ok(Tenant::new(row, defaults))
}

/// Retire or unretire the tenant `cur`, whose row the transaction `c` holds locked; the audit
/// row is written when the state changes.
async fn set_retired_locked(
    c: &impl crate::db::GenericClient,
    cur: &TenantRow,
    retired: bool,
    actor: &str,
) -> Result<TenantRow, TenantError> {
    let (row, expired) = q::set_retired(c, cur.id, retired).await?;
    if cur.retired_at.is_some() != retired {
        audit::record(
            c,
            audit::Entity::Tenant,
            Some(row.id),
            if retired { "retire" } else { "unretire" },
            actor,
            json!({"sessions_expired": expired}),
        )
        .await?;
    }
    Ok(row)
}

/// One tenant by id.
pub async fn get_by_id(
    db: &Db,
    defaults: &Defaults,
    id: i32,
) -> Result<Option<Tenant>, TenantError> {
    let conn = db.get().await?;
    Ok(q::by_id(&**conn, id)
        .await?
        .map(|r| Tenant::new(r, defaults)))
}
