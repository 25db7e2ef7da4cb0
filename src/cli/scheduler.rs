//! `duffy scheduler [--once] [--pool NAME]…`: keep pools filled, run provision/deprovision
//! playbooks, expire sessions (`crate::scheduler`). Never creates or migrates the database: it
//! refuses one that `duffy migrate` has not created or brought up to date (`cli::connect`).
//! `--once` prints a summary line, then `pool NAME: fill-level L, filled B -> A` per selected
//! pool with a fill level (read by `playbooks/refill.yml`). With `events.beanstalkd`, the daemon
//! publishes events continuously and `--once` publishes what is waiting before it exits.

use std::sync::Arc;

use clap::Args;

use super::{CliError, CliResult};
use crate::config::Config;
use crate::scheduler::{self, fill, Scheduler};

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Run one pass (expire, recover, fill, deprovision) and the jobs it makes runnable, then exit
    #[arg(long)]
    pub once: bool,
    /// Accepted for compatibility and ignored: the scheduler never creates or migrates the
    /// database (`duffy migrate` does)
    #[arg(long, hide = true)]
    pub no_migrate: bool,
    /// Database connections of this process
    #[arg(long, default_value_t = 8)]
    pub db_connections: usize,
    /// Only fill this concrete pool and run only its jobs (repeatable; default: every pool)
    #[arg(long = "pool", value_name = "NAME")]
    pub pools: Vec<String>,
}

pub fn run(a: SchedulerArgs, cfg: Config) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(format!("tokio runtime: {e}")))?;
    let r = rt.block_on(main(a, cfg));
    // a blocking task still running (e.g. resolving the database's host name) must not hold up
    // the exit of a stopping scheduler
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    r
}

async fn main(a: SchedulerArgs, cfg: Config) -> CliResult {
    for p in &a.pools {
        if !cfg.concrete_pools().any(|c| &c.name == p) {
            let known: Vec<&str> = cfg.concrete_pools().map(|c| c.name.as_str()).collect();
            return Err(CliError::Usage(format!(
                "--pool {p}: no such concrete pool in the configuration (known: {})",
                known.join(", ")
            )));
        }
    }
    let url = cfg.database_url()?;
    let dbh = super::connect(&cfg, a.db_connections.max(2)).await?;
    let s = Arc::new(Scheduler::new(dbh, Arc::new(cfg)).only_pools(&a.pools));
    // the private run directory (and the sweep of killed schedulers'): fail now, not per job
    s.runs().map_err(|e| CliError::Other(e.to_string()))?;
    if a.once {
        // the fill count of each selected pool before and after the pass (playbooks/refill.yml)
        let filled = |s: Arc<Scheduler>| async move {
            let c = s.db.get().await?;
            let mut v = Vec::new();
            for p in s.cfg.concrete_pools() {
                if let (Some(level), true) = (p.fill_level, s.selected(&p.name)) {
                    v.push((
                        p.name.clone(),
                        level,
                        fill::fill_count(&**c, &p.name).await?,
                    ));
                }
            }
            Ok::<_, scheduler::SchedulerError>(v)
        };
        let err = |e: scheduler::SchedulerError| CliError::Other(e.to_string());
        let before = filled(s.clone()).await.map_err(err)?;
        let r = scheduler::run_once(s.clone()).await.map_err(err)?;
        let after = filled(s.clone()).await.map_err(err)?;
        // the events of this pass (and any waiting) are published before exiting; a failure
        // leaves them for the next run or the daemon
        if let Some(b) = s.cfg.events.beanstalkd.clone() {
            match crate::bus::Publisher::new(b).deliver_all(&s.db).await {
                Ok(n) => tracing::info!("event bus: {n} events published"),
                Err(e) => tracing::warn!("event bus: {e}; the events wait in the outbox"),
            }
        }
        println!(
            "sessions expired: {}, nodes recovered: {}, jobs queued: {}, done: {}, retried: {}, failed: {}, nodes provisioned: {}",
            r.sessions_expired, r.nodes_recovered, r.jobs_queued, r.jobs_done, r.jobs_retried, r.jobs_failed, r.nodes_provisioned
        );
        for ((name, level, b), (_, _, a)) in before.iter().zip(&after) {
            println!("pool {name}: fill-level {level}, filled {b} -> {a}");
        }
        return Ok(());
    }
    if let Some(addr) = s.cfg.scheduler.metrics_addr() {
        let (host, port) = addr.map_err(CliError::Usage)?;
        let listener = crate::api::bind(&host, port).await.map_err(|e| {
            CliError::Other(format!(
                "scheduler.metrics-listen: cannot listen on {host}:{port}: {e}"
            ))
        })?;
        tracing::info!("metrics on http://{host}:{port}/metrics");
        tokio::spawn(serve_metrics(listener, s.clone()));
    }
    scheduler::run_daemon(s, url)
        .await
        .map_err(|e| CliError::Other(e.to_string()))
}

/// The daemon's `GET /metrics` listener (`scheduler.metrics-listen`): the API's connection
/// handling (timeouts, at most 16 connections), one path; runs until the process exits.
async fn serve_metrics(listener: tokio::net::TcpListener, s: Arc<Scheduler>) {
    use crate::api::http::{json_response, method_not_allowed};
    use hyper::{Method, StatusCode};
    let limits = Arc::new(crate::api::server::Limits::new(&s.cfg.app, 16));
    // never stopped: the listener ends with the process
    let (_keep, shutdown) = tokio::sync::watch::channel(false);
    crate::api::serve_with(listener, limits, shutdown, move |req| {
        let s = s.clone();
        async move {
            if req.uri().path() != "/metrics" {
                return json_response(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"detail": "Not Found"}),
                );
            }
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed("GET");
            }
            crate::api::metrics_response(s.render_metrics().await)
        }
    })
    .await;
}
