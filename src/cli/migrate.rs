//! `duffy migrate` (alias `setup-db`): create the database if missing, then create or upgrade
//! the schema; `--status` only reports.

use clap::Args;

use super::{CliError, CliResult};
use crate::config::Config;
use crate::db::{self, migrate};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Only report the schema versions, change nothing
    #[arg(long)]
    pub status: bool,
    /// Do not create the database when it does not exist
    #[arg(long)]
    pub no_create_db: bool,
}

pub async fn run(a: MigrateArgs, cfg: &Config) -> CliResult {
    let url = cfg.database_url()?;
    if !a.status && !a.no_create_db && db::ensure_database(&url).await? {
        println!(
            "Created database {}",
            db::url::dbname(&db::url::parse(&url).map_err(db::DbError::from)?)
        );
    }
    let dbh = db::Db::connect(&url, 1).await.map_err(|e| match e {
        // not `run duffy migrate`: this is it, told not to create the database
        db::DbError::NotMigrated {
            target, problem, ..
        } => CliError::Other(format!("database {target} {problem}")),
        e => e.into(),
    })?;
    let mut conn = dbh.get().await?;
    if a.status {
        let s = migrate::status(&**conn).await?;
        println!(
            "upstream revision: {}{}",
            s.upstream_revision.as_deref().unwrap_or("<none>"),
            if s.upstream_revision.as_deref() == Some(migrate::UPSTREAM_HEAD) {
                " (head)"
            } else {
                ""
            }
        );
        println!(
            "duffy schema: {} (latest {})",
            s.duffy_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "<none>".into()),
            s.duffy_latest
        );
        return Ok(());
    }
    let report = migrate::run(&mut conn)
        .await
        .map_err(|e| CliError::Failed {
            what: "migration failed, nothing was changed".into(),
            detail: e.to_string(),
        })?;
    if report.created_upstream {
        println!(
            "Creating database schema (upstream Duffy revision {})",
            migrate::UPSTREAM_HEAD
        );
    } else if let Some(found) = &report.upstream_found {
        println!("Found upstream Duffy schema at revision {found}");
    }
    for r in &report.upstream_applied {
        println!("Upgraded upstream schema to: {r}");
    }
    for m in &report.duffy_applied {
        println!("Applied duffy migration {m}");
    }
    if !report.changed() {
        println!("Nothing to upgrade.");
    }
    Ok(())
}
