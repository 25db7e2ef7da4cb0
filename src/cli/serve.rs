//! `duffy serve`: the REST API (and, when `metaclient` is configured, the legacy cico API on
//! its own listener). Creates the database and applies migrations first unless told not to.

use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult};
use crate::api::{self, AppState};
use crate::config::Config;
use crate::db::{self, migrate};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to bind (default: app.host, else 127.0.0.1)
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// Port to bind (default: app.port, else 8080)
    #[arg(short = 'p', long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Accepted for upstream compatibility; duffy does not reload code
    #[arg(long, overrides_with = "no_reload", hide = true)]
    pub reload: bool,
    #[arg(long, hide = true)]
    pub no_reload: bool,
    /// Do not create the database / apply migrations at start-up
    #[arg(long)]
    pub no_migrate: bool,
    /// Database connections per process
    #[arg(long, default_value_t = 16)]
    pub db_connections: usize,
}

pub fn run(a: ServeArgs, cfg: Config, loglevel: &str) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("tokio runtime: {e}")))?;
    rt.block_on(serve(a, cfg, loglevel))
}

async fn serve(a: ServeArgs, cfg: Config, loglevel: &str) -> CliResult {
    let host = a.host.clone().unwrap_or_else(|| cfg.app.host.clone());
    let port = a.port.unwrap_or(cfg.app.port);
    let url = cfg.database_url()?;
    if !a.no_migrate {
        db::ensure_database(&url).await?;
    }
    let dbh = super::connect(&cfg, a.db_connections).await?;
    if !a.no_migrate {
        let mut c = dbh.get().await?;
        let r = migrate::run(&mut c).await.map_err(|e| CliError::Failed {
            what: "database migration failed".into(),
            detail: e.to_string(),
        })?;
        if r.changed() {
            tracing::info!(?r, "database schema created or upgraded");
        }
    }
    let listener = api::bind(&host, port)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {host}:{port}: {e}")))?;
    println!(" * Starting Duffy...");
    println!(" * Host address : {host}");
    println!(" * Port number  : {port}");
    println!(" * Log level    : {loglevel}");
    println!(" * Serving API docs on http://{host}:{port}/docs");
    let st = Arc::new(AppState::new(cfg, dbh));
    let server = tokio::spawn(api::serve_v1(listener, st));
    tokio::select! {
        _ = server => Err(CliError::Other("server stopped".into())),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
