//! `duffy reconcile [--apply] [--pool NAME]… [--grace DURATION]`: the provider's instances of
//! each pool against the database (`crate::reconcile`): orphaned instances and nodes whose
//! instance is gone, one line each; a dry run unless `--apply`.

use clap::Args;

use super::{connect, CliError, CliResult};
use crate::config::Config;
use crate::reconcile::{self, Options, ReconcileError};

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Terminate orphaned instances (past the grace period) and mark nodes whose instance is
    /// gone `failed`; without it nothing changes (dry run)
    #[arg(long)]
    pub apply: bool,
    /// Only this concrete pool (repeatable; default: every pool with a reconcile playbook)
    #[arg(long = "pool", value_name = "NAME")]
    pub pools: Vec<String>,
    /// Orphans younger than this are reported but never terminated (a provisioning run may
    /// be about to record them)
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub grace: String,
}

pub async fn run(a: ReconcileArgs, cfg: &Config) -> CliResult {
    let grace = crate::duration::parse_config_duration(&a.grace)
        .map_err(|e| CliError::Usage(format!("--grace: {e}")))?;
    let db = connect(cfg, 2).await?;
    let opts = Options {
        apply: a.apply,
        pools: a.pools,
        grace,
    };
    let findings = reconcile::run(cfg, &db, &opts).await.map_err(|e| match e {
        ReconcileError::Usage(m) => CliError::Usage(m),
        other => CliError::Other(other.to_string()),
    })?;
    for f in &findings {
        println!("{f}");
    }
    let mode = if a.apply { "applied" } else { "dry run" };
    println!("{} finding(s), {mode}", findings.len());
    Ok(())
}
