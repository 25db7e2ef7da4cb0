//! `duffy serve`: the REST API (and, when `metaclient` is configured, the legacy cico API on
//! its own listener). `duffy serve-legacy`: only the legacy cico API (upstream parity). Neither
//! creates nor migrates the database: both refuse one that `duffy migrate` has not created or
//! brought up to date (`cli::connect`).

use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult};
use crate::api::legacy::Legacy;
use crate::api::server::Limits;
use crate::api::{self, AppState};
use crate::config::Config;

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
    /// Accepted for compatibility and ignored: `serve` never creates or migrates the database
    /// (`duffy migrate` does)
    #[arg(long, hide = true)]
    pub no_migrate: bool,
    /// Database connections per process
    #[arg(long, default_value_t = 16)]
    pub db_connections: usize,
    /// Address of the legacy cico API listener (default: metaclient.host, else 127.0.0.1)
    #[arg(long, value_name = "HOST")]
    pub legacy_host: Option<String>,
    /// Port of the legacy cico API listener (default: metaclient.port, else 9090)
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub legacy_port: Option<u16>,
    /// Do not serve the legacy cico API even though `metaclient` is configured
    #[arg(long, conflicts_with_all = ["legacy_host", "legacy_port"])]
    pub no_legacy: bool,
}

#[derive(Args, Debug)]
pub struct ServeLegacyArgs {
    /// Address to bind (default: metaclient.host, else 127.0.0.1)
    #[arg(short = 'H', long)]
    pub host: Option<String>,
    /// Port to bind (default: metaclient.port, else 9090)
    #[arg(short = 'p', long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Accepted for upstream compatibility and unused: duffy's legacy API calls the duffy
    /// library (and database) directly instead of the REST API at this address
    #[arg(short = 'D', long, value_name = "URL")]
    pub dest: Option<String>,
    /// Accepted for upstream compatibility; duffy does not reload code
    #[arg(long, overrides_with = "no_reload", hide = true)]
    pub reload: bool,
    #[arg(long, hide = true)]
    pub no_reload: bool,
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
    // the legacy API's templates and selectors are checked before anything else
    let legacy = if a.no_legacy {
        None
    } else {
        Legacy::from_config(&cfg)?
    };
    if legacy.is_none() && !a.no_legacy && (a.legacy_host.is_some() || a.legacy_port.is_some()) {
        tracing::warn!(
            "--legacy-host/--legacy-port ignored: no `metaclient` section in the configuration"
        );
    }
    let host = a.host.clone().unwrap_or_else(|| cfg.app.host.clone());
    let port = a.port.unwrap_or(cfg.app.port);
    let dbh = super::connect(&cfg, a.db_connections).await?;
    let listener = api::bind(&host, port)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {host}:{port}: {e}")))?;
    let legacy = match legacy {
        None => None,
        Some(lg) => {
            let m = cfg.metaclient.as_ref().expect("metaclient configured");
            let lhost = a.legacy_host.clone().unwrap_or_else(|| m.host.clone());
            let lport = a.legacy_port.unwrap_or(m.port);
            let l = api::bind(&lhost, lport).await.map_err(|e| {
                CliError::Other(format!(
                    "cannot listen on {lhost}:{lport} (legacy cico API; --legacy-port, --no-legacy): {e}"
                ))
            })?;
            Some((l, lg, lhost, lport))
        }
    };
    println!(" * Starting Duffy...");
    println!(" * Host address : {host}");
    println!(" * Port number  : {port}");
    println!(" * Log level    : {loglevel}");
    println!(" * Serving API docs on http://{host}:{port}/docs");
    if let Some((_, _, lhost, lport)) = &legacy {
        println!(" * Legacy cico API (metaclient) on http://{lhost}:{lport}/");
    }
    let limits = Arc::new(Limits::from_config(&cfg.app, a.db_connections));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let st = Arc::new(AppState::new(cfg, dbh));
    let mut servers = tokio::task::JoinSet::new();
    if let Some((l, lg, _, _)) = legacy {
        servers.spawn(api::legacy::serve(
            l,
            limits.clone(),
            shutdown.clone(),
            st.clone(),
            Arc::new(lg),
        ));
    }
    servers.spawn(api::serve_v1(listener, limits.clone(), shutdown, st));
    run_until_signal(servers, stop, &limits).await
}

/// `duffy serve-legacy`: only the legacy cico API.
pub fn run_legacy(a: ServeLegacyArgs, cfg: Config, loglevel: &str) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("tokio runtime: {e}")))?;
    rt.block_on(serve_legacy(a, cfg, loglevel))
}

async fn serve_legacy(a: ServeLegacyArgs, cfg: Config, loglevel: &str) -> CliResult {
    let Some(lg) = Legacy::from_config(&cfg)? else {
        return Err(CliError::Usage(
            "serve-legacy: no `metaclient` section in the configuration (usermap, poolmap)".into(),
        ));
    };
    let m = cfg.metaclient.as_ref().expect("metaclient configured");
    let host = a.host.clone().unwrap_or_else(|| m.host.clone());
    let port = a.port.unwrap_or(m.port);
    if a.dest.is_some() || m.dest.is_some() {
        tracing::info!(
            "--dest / metaclient.dest is not used: duffy's legacy API uses the database directly"
        );
    }
    let dbh = super::connect(&cfg, a.db_connections).await?;
    let listener = api::bind(&host, port)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {host}:{port}: {e}")))?;
    println!(" * Starting Duffy Metaclient for Legacy Support...");
    println!(" * Host address        : {host}");
    println!(" * Port number         : {port}");
    println!(" * Destination address : (unused: duffy calls the library directly)");
    println!(" * Log level           : {loglevel}");
    println!(" * Serving API docs on http://{host}:{port}/docs");
    let limits = Arc::new(Limits::from_config(&cfg.app, a.db_connections));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let st = Arc::new(AppState::new(cfg, dbh));
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(api::legacy::serve(
        listener,
        limits.clone(),
        shutdown,
        st,
        Arc::new(lg),
    ));
    run_until_signal(servers, stop, &limits).await
}

/// Serve until SIGTERM/SIGINT, then shut down gracefully: stop accepting, let in-flight
/// requests finish (at most `app.shutdown-timeout`), close idle keep-alives, exit 0.
async fn run_until_signal(
    mut servers: tokio::task::JoinSet<()>,
    stop: tokio::sync::watch::Sender<bool>,
    limits: &Limits,
) -> CliResult {
    tokio::select! {
        _ = servers.join_next() => return Err(CliError::Other("server stopped".into())),
        _ = shutdown_signal() => {}
    }
    tracing::info!(
        "shutting down: no new connections; waiting up to {:?} for {} open connections",
        limits.shutdown_timeout,
        limits.open_connections()
    );
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "shutdown: {} connections still open after {:?}, closing them",
            limits.open_connections(),
            limits.shutdown_timeout
        );
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
