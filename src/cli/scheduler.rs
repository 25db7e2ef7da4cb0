//! `duffy scheduler [--once]`: keep pools filled, run provision/deprovision playbooks, expire
//! sessions (`crate::scheduler`). Applies migrations first unless told not to, like `serve`.

use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult};
use crate::config::Config;
use crate::db::{self, migrate};
use crate::scheduler::{self, Scheduler};

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Run one pass (expire, recover, fill, deprovision) and the jobs it makes runnable, then exit
    #[arg(long)]
    pub once: bool,
    /// Do not create the database / apply migrations at start-up
    #[arg(long)]
    pub no_migrate: bool,
    /// Database connections of this process
    #[arg(long, default_value_t = 8)]
    pub db_connections: usize,
}

pub fn run(a: SchedulerArgs, cfg: Config) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("tokio runtime: {e}")))?;
    rt.block_on(main(a, cfg))
}

async fn main(a: SchedulerArgs, cfg: Config) -> CliResult {
    let url = cfg.database_url()?;
    if !a.no_migrate {
        db::ensure_database(&url).await?;
    }
    let dbh = super::connect(&cfg, a.db_connections.max(2)).await?;
    if !a.no_migrate {
        let mut c = dbh.get().await?;
        migrate::run(&mut c).await.map_err(|e| CliError::Failed {
            what: "database migration failed".into(),
            detail: e.to_string(),
        })?;
    }
    let s = Arc::new(Scheduler::new(dbh, Arc::new(cfg)));
    if a.once {
        let r = scheduler::run_once(s)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        println!(
            "sessions expired: {}, nodes recovered: {}, jobs queued: {}, done: {}, retried: {}, failed: {}",
            r.sessions_expired, r.nodes_recovered, r.jobs_queued, r.jobs_done, r.jobs_retried, r.jobs_failed
        );
        return Ok(());
    }
    scheduler::run_daemon(s, url)
        .await
        .map_err(|e| CliError::Other(e.to_string()))
}
