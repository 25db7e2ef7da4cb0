//! The `duffy` command line (clap): global flags, subcommand dispatch, logging set-up and the
//! mapping of errors to messages and exit codes. Subcommands live in sibling modules.
//!
//! Exit codes: 0 ok; 1 operation failed (upstream's `ERROR: …` convention); 2 usage or
//! configuration error.

mod admin;
mod client;
mod configcmd;
mod import_legacy;
mod migrate;
mod reconcile;
mod scheduler;
mod serve;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
use crate::db::{self, Db, DbError};

/// Error of a CLI command, with how to report it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// configuration invalid: one line, exit 2
    #[error("config error: {0}")]
    Config(#[from] ConfigError),
    /// bad arguments: one line, exit 2
    #[error("{0}")]
    Usage(String),
    /// upstream admin style: `ERROR: <what>` / `ERROR DETAIL: <detail>`, exit 1
    #[error("ERROR: {what}\nERROR DETAIL: {detail}")]
    Failed { what: String, detail: String },
    /// anything else: one line, exit 1
    #[error("ERROR: {0}")]
    Other(String),
}

impl From<DbError> for CliError {
    fn from(e: DbError) -> Self {
        CliError::Other(e.to_string())
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub type CliResult = Result<(), CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "duffy",
    version = concat!(env!("CARGO_PKG_VERSION"), " (compatible with Duffy 3.4.0)"),
    about = "CentOS CI node provisioner: pools of ready test hosts lent to CI tenants"
)]
pub struct Cli {
    /// Log level (upstream names): critical, error, warning, info, debug, trace
    #[arg(short = 'l', long, global = true, value_parser = ["critical", "error", "warning", "info", "debug", "trace"])]
    pub loglevel: Option<String>,
    /// Config file or directory (repeatable; default: $DUFFY_CONFIG, else /etc/duffy and ~/.config/duffy)
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE|DIR")]
    pub config: Vec<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check or show the effective configuration
    #[command(subcommand)]
    Config(configcmd::ConfigCmd),
    /// Create or upgrade the database schema (adopts an existing upstream Duffy database)
    #[command(alias = "setup-db")]
    Migrate(migrate::MigrateArgs),
    /// Administrate tenants directly in the database
    Admin(admin::AdminArgs),
    /// Serve the REST API (and the legacy cico API when `metaclient` is configured)
    Serve(serve::ServeArgs),
    /// Command line client for the Duffy API (tenants: pools and sessions)
    Client(client::ClientArgs),
    /// Serve only the legacy cico API (python-cicoclient's /Node/get, /Node/done, /Inventory)
    ServeLegacy(serve::ServeLegacyArgs),
    /// Keep pools filled, run provision/deprovision playbooks, expire sessions
    Scheduler(scheduler::SchedulerArgs),
    /// Per-pool node counts (ready, deployed, provisioning) for operators and Zabbix
    Stats(stats::StatsArgs),
    /// Take over a Duffy v2 installation: import its tenants, hosts and sessions from MariaDB
    /// (a dry run unless --apply)
    ImportLegacy(import_legacy::ImportLegacyArgs),
    /// Compare the provider's instances with the database: orphans, nodes whose instance is
    /// gone (dry run unless --apply)
    Reconcile(reconcile::ReconcileArgs),
}

fn init_logging(level: &str) {
    let directive = match level {
        "critical" | "error" => "error",
        "warning" => "warn",
        other => other,
    };
    // deadpool logs a warning per pooled connection that a database restart closes; duffy
    // reports the failure itself (the scheduler once per outage), so only its errors are kept
    // unless asked for by name
    let quiet = |f: String| {
        if f.contains("deadpool") {
            f
        } else {
            format!("{f},deadpool.postgres=error")
        }
    };
    let filter = std::env::var("DUFFY_LOG")
        .ok()
        .and_then(|s| tracing_subscriber::EnvFilter::try_new(quiet(s)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(quiet(directive.to_string())));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Load the config given by `-c` (or the default lookup).
pub fn load_config(paths: &[PathBuf]) -> Result<Config, CliError> {
    let cfg = config::load(paths)?;
    if cfg.has_tasks {
        tracing::info!("config: section `tasks` (celery) accepted and not used: duffy's scheduler replaces the celery worker");
    }
    Ok(cfg)
}

/// Connect to the configured database, refusing one that `duffy migrate` has not created or
/// brought up to date (every command but `migrate` itself).
/// With `events.beanstalkd` configured, the database also starts collecting events for the
/// bus (`crate::bus::enable`, idempotent), whichever command runs first.
pub async fn connect(cfg: &Config, pool_size: usize) -> Result<Db, CliError> {
    let url = cfg.database_url()?;
    let db = Db::connect_migrated(&url, pool_size).await?;
    if cfg.events.beanstalkd.is_some() {
        crate::bus::enable(&db).await?;
    }
    Ok(db)
}

fn run(cli: Cli) -> CliResult {
    // Logging needs the config (app.loglevel) and the config's messages need logging:
    // load first, report problems after logging is set up.
    let loaded = config::load(&cli.config);
    let level = match (&cli.loglevel, &cli.command, &loaded) {
        (Some(l), _, _) => l.clone(),
        (None, Command::Serve(_), Ok(cfg)) => cfg.app.loglevel.name().to_string(),
        (None, Command::Scheduler(_), _) => "info".to_string(),
        (None, Command::ServeLegacy(_), Ok(cfg)) => cfg
            .metaclient
            .as_ref()
            .map_or("info", |m| m.loglevel.name())
            .to_string(),
        _ => "warning".to_string(),
    };
    init_logging(&level);
    let cfg = loaded?;
    if cfg.has_tasks {
        tracing::info!("config: section `tasks` (celery) accepted and not used: duffy's scheduler replaces the celery worker");
    }
    for p in cfg.concrete_pools().filter(|p| p.fill_level.is_none()) {
        tracing::warn!(pool = %p.name, "concrete pool has no fill-level: it is never filled and not listed");
    }
    for p in cfg
        .concrete_pools()
        .filter(|p| p.fill_level.is_some())
        .filter(|p| p.mechanism.as_ref().is_none_or(|m| m.provision.is_none()))
    {
        tracing::warn!(pool = %p.name, "concrete pool has no provision playbook (mechanism.ansible.provision.playbook): the scheduler cannot fill it");
    }
    if let Some((key, msg)) = cfg.unsupported_database() {
        tracing::warn!("config: {key}: {msg}: duffy needs PostgreSQL, every command that uses the database will refuse this one");
    }
    match cli.command {
        Command::Config(c) => configcmd::run(c, &cfg),
        Command::Migrate(a) => db::block_on(migrate::run(a, &cfg)),
        Command::Admin(a) => db::block_on(admin::run(a, &cfg)),
        Command::Serve(a) => serve::run(a, cfg, &level),
        Command::Client(a) => client::run(a, &cfg),
        Command::ServeLegacy(a) => serve::run_legacy(a, cfg, &level),
        Command::Scheduler(a) => scheduler::run(a, cfg),
        Command::Stats(a) => db::block_on(stats::run(a, &cfg)),
        Command::ImportLegacy(a) => db::block_on(import_legacy::run(a, &cfg)),
        Command::Reconcile(a) => db::block_on(reconcile::run(a, &cfg)),
    }
}

/// Entry point of the `duffy` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if e.use_stderr() && crate::sshkeys::looks_private(&e.to_string()) {
                // clap quotes the offending argument (twice): never a private key
                eprintln!(
                    "error: an argument is a private key (not shown); SSH keys are given as \
                     public keys (the .pub file): SSH_KEY of create-tenant, --ssh-key of update-tenant"
                );
                return ExitCode::from(2);
            }
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                CliError::Failed { .. } | CliError::Other(_) => eprintln!("{e}"),
                _ => eprintln!("duffy: {e}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}
