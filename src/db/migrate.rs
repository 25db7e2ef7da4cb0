//! Embedded, versioned schema migrations.
//!
//! Two tracks in one transaction under an advisory lock (so concurrent `duffy migrate` runs are
//! safe and a failure changes nothing):
//! 1. **upstream track** — the tables of upstream Duffy v3. A fresh database gets the head schema
//!    and an `alembic_version` stamp; an existing upstream database is *adopted*: its alembic
//!    revision is recognised and the remaining upstream steps (pure index DDL) are applied,
//!    exactly as upstream's `duffy migration upgrade` would. No row is touched.
//! 2. **duffy track** — duffy's own `duffy_*` tables, versioned in `duffy_schema_migrations`.

use tokio_postgres::Client;

use super::DbError;

/// Upstream's alembic head revision, which duffy's schema is compatible with.
pub const UPSTREAM_HEAD: &str = "6654d536b836";

/// Upstream revisions (oldest first) and the DDL that leads *to* each from its predecessor.
const UPSTREAM_STEPS: [(&str, &str); 3] = [
    ("ce2e575cb800", ""),
    (
        "36cf064c0481",
        "DROP INDEX active_hostname_index;
         DROP INDEX active_ipaddr_index;
         CREATE UNIQUE INDEX active_hostname_index ON nodes (hostname)
           WHERE retired_at IS NULL AND state <> 'provisioning' AND state <> 'failed';
         CREATE UNIQUE INDEX active_ipaddr_index ON nodes (ipaddr)
           WHERE retired_at IS NULL AND state <> 'provisioning' AND state <> 'failed';",
    ),
    (
        "6654d536b836",
        "CREATE INDEX nodes_state_index ON nodes (state);
         CREATE INDEX sessions_nodes_session_id_index ON sessions_nodes (session_id);",
    ),
];

/// duffy's own migrations: (version, name, SQL). Append only; never edit a released one.
const DUFFY_MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "history", include_str!("sql/0001_history.sql")),
    (2, "jobs", include_str!("sql/0002_jobs.sql")),
    (3, "idempotency", include_str!("sql/0003_idempotency.sql")),
    (4, "outbox", include_str!("sql/0004_outbox.sql")),
];

const UPSTREAM_TABLES: [&str; 4] = ["nodes", "sessions", "sessions_nodes", "tenants"];
const LOCK_KEY: i64 = 0x6475_6666_795f_6d67; // "duffy_mg"

/// What a migration run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// upstream revision found (None: fresh database)
    pub upstream_found: Option<String>,
    /// the upstream schema was created from scratch
    pub created_upstream: bool,
    /// upstream revisions applied
    pub upstream_applied: Vec<String>,
    /// duffy migrations applied, as `NNNN_name`
    pub duffy_applied: Vec<String>,
}

impl Report {
    pub fn changed(&self) -> bool {
        self.created_upstream || !self.upstream_applied.is_empty() || !self.duffy_applied.is_empty()
    }
}

/// Schema state without changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub upstream_revision: Option<String>,
    pub duffy_version: Option<i32>,
    pub duffy_latest: i32,
}

async fn table_exists(c: &impl super::GenericClient, name: &str) -> Result<bool, DbError> {
    Ok(c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}

async fn upstream_revision(c: &impl super::GenericClient) -> Result<Option<String>, DbError> {
    if !table_exists(c, "alembic_version").await? {
        return Ok(None);
    }
    let rows = c
        .query("SELECT version_num FROM alembic_version", &[])
        .await?;
    match rows.len() {
        0 => Ok(None),
        1 => Ok(Some(rows[0].get(0))),
        _ => Err(DbError::Migration(
            "alembic_version has several rows (branched upstream migrations); refusing to adopt"
                .into(),
        )),
    }
}

async fn duffy_version(c: &impl super::GenericClient) -> Result<Option<i32>, DbError> {
    if !table_exists(c, "duffy_schema_migrations").await? {
        return Ok(None);
    }
    Ok(
        c.query_one("SELECT max(version) FROM duffy_schema_migrations", &[])
            .await?
            .get(0),
    )
}

fn unknown_revision(rev: &str) -> String {
    format!(
        "unknown upstream Duffy revision {rev} (known: {}); refusing to touch this database",
        UPSTREAM_STEPS.map(|s| s.0).join(", ")
    )
}

/// Report the schema versions of the database.
pub async fn status(c: &impl super::GenericClient) -> Result<Status, DbError> {
    Ok(Status {
        upstream_revision: upstream_revision(c).await?,
        duffy_version: duffy_version(c).await?,
        duffy_latest: latest(),
    })
}

/// The newest duffy migration this binary has.
fn latest() -> i32 {
    DUFFY_MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Refuse a database whose schema is not the one this duffy needs — none at all, an upstream
/// Duffy database not adopted yet, an older upstream revision or pending duffy migrations —
/// saying that `duffy migrate` (the only command that creates, adopts or upgrades a schema)
/// fixes it. `target` names the database. A duffy schema *newer* than this binary's is
/// accepted (duffy's migrations only add `duffy_*` tables, so a binary one release behind keeps
/// working during a rolling upgrade); an unknown upstream revision is refused outright, as
/// `duffy migrate` refuses it.
pub async fn check(c: &impl super::GenericClient, target: &str) -> Result<(), DbError> {
    // Every command and module run starts with this check: the usual case (both version tables
    // there, one upstream revision) in one round trip; anything else through [`status`], which
    // looks the tables up first and says what is wrong.
    let usual = c
        .query_one(
            "SELECT (SELECT array_agg(version_num::text) FROM alembic_version),
                    (SELECT max(version) FROM duffy_schema_migrations)",
            &[],
        )
        .await;
    let s = match usual {
        Ok(row) => match row.get::<_, Option<Vec<String>>>(0).as_deref() {
            Some([rev]) => Status {
                upstream_revision: Some(rev.clone()),
                duffy_version: row.get(1),
                duffy_latest: latest(),
            },
            _ => status(c).await?,
        },
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            status(c).await?
        }
        Err(e) => return Err(e.into()),
    };
    let refuse = |problem: String, fix: &'static str| DbError::NotMigrated {
        target: target.to_string(),
        problem,
        fix,
    };
    match (&s.upstream_revision, s.duffy_version) {
        (None, None) => Err(refuse("has no duffy schema".into(), "to create it")),
        (Some(rev), None) => Err(refuse(
            format!("is an upstream Duffy database (revision {rev}) not adopted yet"),
            "to adopt it",
        )),
        (None, Some(_)) => Err(refuse(
            "has duffy tables but no upstream Duffy schema version (alembic_version)".into(),
            "for what is wrong",
        )),
        (Some(rev), Some(_)) if rev != UPSTREAM_HEAD => {
            if UPSTREAM_STEPS.iter().any(|(r, _)| r == rev) {
                Err(refuse(
                    format!("has upstream revision {rev}, this duffy needs {UPSTREAM_HEAD}"),
                    "to upgrade it",
                ))
            } else {
                Err(DbError::Migration(format!(
                    "database {target}: {}",
                    unknown_revision(rev)
                )))
            }
        }
        (Some(_), Some(v)) if v < s.duffy_latest => Err(refuse(
            format!(
                "has duffy schema version {v}, this duffy needs {}",
                s.duffy_latest
            ),
            "to upgrade it",
        )),
        (Some(_), Some(v)) => {
            if v > s.duffy_latest {
                tracing::warn!(
                    "database {target} has duffy schema version {v}, newer than this duffy's {}: upgrade duffy",
                    s.duffy_latest
                );
            }
            Ok(())
        }
    }
}

/// Create or upgrade the schema. Idempotent: a second run reports no change.
pub async fn run(client: &mut Client) -> Result<Report, DbError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    let mut report = Report::default();

    let mut present = Vec::new();
    for t in UPSTREAM_TABLES {
        if table_exists(&tx, t).await? {
            present.push(t);
        }
    }
    let revision = upstream_revision(&tx).await?;
    report.upstream_found = revision.clone();
    match (&revision, present.len()) {
        (None, 0) => {
            tx.batch_execute(include_str!("sql/upstream_head.sql")).await?;
            report.created_upstream = true;
        }
        (None, _) => {
            return Err(DbError::Migration(format!(
                "tables {} exist but alembic_version is missing or empty: not a Duffy database duffy can adopt",
                present.join(", ")
            )))
        }
        (Some(rev), n) => {
            if n != UPSTREAM_TABLES.len() {
                return Err(DbError::Migration(format!(
                    "upstream revision {rev} recorded but only tables {} exist",
                    present.join(", ")
                )));
            }
            let Some(pos) = UPSTREAM_STEPS.iter().position(|(r, _)| r == rev) else {
                return Err(DbError::Migration(unknown_revision(rev)));
            };
            for (next, ddl) in &UPSTREAM_STEPS[pos + 1..] {
                tx.batch_execute(ddl).await?;
                tx.execute("UPDATE alembic_version SET version_num = $1", &[next])
                    .await?;
                report.upstream_applied.push(next.to_string());
            }
        }
    }

    if !table_exists(&tx, "duffy_schema_migrations").await? {
        tx.batch_execute(
            "CREATE TABLE duffy_schema_migrations (
           version    integer PRIMARY KEY,
           name       text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    }
    let current = duffy_version(&tx).await?.unwrap_or(0);
    for (version, name, sql) in DUFFY_MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(|e| {
            DbError::Migration(format!("duffy migration {version:04}_{name} failed: {e}"))
        })?;
        tx.execute(
            "INSERT INTO duffy_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        report.duffy_applied.push(format!("{version:04}_{name}"));
    }
    tx.commit().await?;
    Ok(report)
}
