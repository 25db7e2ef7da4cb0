//! `duffy reconcile`: compare the provider's instances of each pool with the database.
//!
//! The provider-specific part is a playbook — the pool's `reconcile`
//! (`playbooks/ec2-reconcile.yml` for EC2), run like the scheduler's (`duffy_in`/`duffy_out`,
//! the pool's templated extra vars): given `duffy_in.nodes` (the pool's nodes that should have
//! an instance), it reports `duffy_out.instances = [{instance_id, node_id, state, launch_time}]`,
//! every instance this installation started for the pool (by its tags); given
//! `duffy_in.terminate` (instance ids) it also terminates those and reports
//! `duffy_out.terminated`. Another cloud is another playbook, not new Rust.
//!
//! Findings: an **orphan** is an instance whose node is not live (no node, or the node is
//! `done`/`failed`/…: it costs money and nobody uses it) — terminated with `apply` once older
//! than the grace period (an instance of a run in flight is not touched); a **gone** node is a
//! `ready`/`contextualizing`/`deployed` node without a running instance — marked `failed` with
//! the reason with `apply`. Without `apply` nothing changes (dry run). Every action is audited
//! (`reconcile-terminate` on the pool, `reconcile-instance-gone` on the node, actor
//! `reconcile`); node changes go through the state machine as the operator.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value as Json};
use thiserror::Error;

use crate::config::{Config, Pool};
use crate::db::{audit, nodes, sessions, Db, DbError};
use crate::scheduler::playbook;
use crate::scheduler::rundir::{private_dir, RunDirs};
use crate::state::{Actor, NodeState};

/// Nodes that should have an instance.
const LIVE: &[NodeState] = &[
    NodeState::Provisioning,
    NodeState::Ready,
    NodeState::Contextualizing,
    NodeState::Deployed,
    NodeState::Deprovisioning,
];
/// Live nodes that must have one *now* (a provisioning node may not have started it yet, a
/// deprovisioning one is losing it).
const MUST_HAVE: &[NodeState] = &[
    NodeState::Ready,
    NodeState::Contextualizing,
    NodeState::Deployed,
];

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("pool {pool}: {msg}")]
    Pool { pool: String, msg: String },
    #[error("{0}")]
    Usage(String),
}

/// What `duffy reconcile` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub apply: bool,
    /// only these pools (empty: every concrete pool with a reconcile playbook)
    pub pools: Vec<String>,
    /// orphans younger than this are reported, never terminated
    pub grace: Duration,
}

/// One finding and what was done about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Orphan {
        pool: String,
        instance_id: String,
        node_id: Option<i64>,
        age_secs: Option<i64>,
        action: Action,
    },
    Gone {
        pool: String,
        node_id: i32,
        state: NodeState,
        action: Action,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// dry run: what `--apply` would do
    Would,
    /// done
    Done,
    /// an orphan within the grace period: left alone
    InGrace,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Orphan {
                pool,
                instance_id,
                node_id,
                age_secs,
                action,
            } => {
                let node = node_id.map_or("no node".to_string(), |n| format!("node {n}"));
                let age = age_secs.map_or("age unknown".to_string(), |a| format!("age {a}s"));
                let what = match action {
                    Action::Would => "would terminate (dry run)",
                    Action::Done => "terminated",
                    Action::InGrace => "within the grace period, left alone",
                };
                write!(
                    f,
                    "orphan: pool {pool}: instance {instance_id} ({node}, not live; {age}): {what}"
                )
            }
            Finding::Gone {
                pool,
                node_id,
                state,
                action,
            } => {
                let what = match action {
                    Action::Would => "would mark failed (dry run)",
                    _ => "marked failed",
                };
                write!(
                    f,
                    "gone: pool {pool}: node {node_id} ({}) has no running instance: {what}",
                    state.as_str()
                )
            }
        }
    }
}

/// The pools `opts` selects: concrete, with a reconcile playbook.
fn pools<'a>(cfg: &'a Config, opts: &Options) -> Result<Vec<&'a Pool>, ReconcileError> {
    let with = |p: &&Pool| p.mechanism.as_ref().is_some_and(|m| m.reconcile.is_some());
    for name in &opts.pools {
        match cfg.concrete_pools().find(|p| &p.name == name) {
            None => {
                return Err(ReconcileError::Usage(format!(
                    "--pool {name}: no such concrete pool in the configuration"
                )))
            }
            Some(p) if !with(&p) => {
                return Err(ReconcileError::Usage(format!(
                    "--pool {name}: the pool has no reconcile playbook (pool key `reconcile`)"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(cfg
        .concrete_pools()
        .filter(with)
        .filter(|p| opts.pools.is_empty() || opts.pools.contains(&p.name))
        .collect())
}

/// Run the pool's reconcile playbook with `duffy_in`; its `duffy_out`.
async fn run_playbook(
    cfg: &Config,
    runs: &RunDirs,
    pool: &Pool,
    duffy_in: &Json,
) -> Result<Json, ReconcileError> {
    let err = |msg: String| ReconcileError::Pool {
        pool: pool.name.clone(),
        msg,
    };
    let mech = pool.mechanism.as_ref().expect("selected pools have one");
    let pb = mech.reconcile.as_ref().expect("selected pools have one");
    let vars = playbook::extra_vars(pool, pb, duffy_in).map_err(err)?;
    let logs = cfg.scheduler.job_log_dir();
    private_dir(&logs, 0o750).map_err(|e| err(format!("{}: {e}", logs.display())))?;
    let log_path: PathBuf = logs.join(format!(
        "reconcile-{}-{}.log",
        pool.name,
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
    ));
    let topdir = mech.topdir.clone().unwrap_or_else(|| ".".into());
    tracing::info!(pool = %pool.name, playbook = %pb.playbook, log = %log_path.display(), "running reconcile playbook");
    let out = playbook::run(&playbook::Run {
        ansible_playbook: &cfg.scheduler.ansible_playbook,
        topdir: &topdir,
        playbook: &pb.playbook,
        extra_vars: &vars,
        timeout: cfg.scheduler.playbook_timeout.0,
        log_path: &log_path,
        runs,
    })
    .await
    .map_err(err)?;
    out.ok_or_else(|| err(format!("{} set no duffy_out", pb.playbook)))
}

/// Age in seconds of an instance launched at `launch_time` (RFC 3339), at `now`.
fn age_secs(launch_time: &Json, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(launch_time.as_str()?).ok()?;
    Some((now - t.with_timezone(&chrono::Utc)).num_seconds())
}

/// Reconcile the selected pools; every finding, in pool order.
pub async fn run(cfg: &Config, db: &Db, opts: &Options) -> Result<Vec<Finding>, ReconcileError> {
    let selected = pools(cfg, opts)?;
    let state_dir = cfg.scheduler.state_dir();
    let runs = RunDirs::open(&state_dir).map_err(|e| {
        ReconcileError::Usage(format!(
            "scheduler state directory {}: {e}",
            state_dir.display()
        ))
    })?;
    let mut findings = Vec::new();
    for pool in selected {
        let live = {
            let c = db.get().await?;
            nodes::in_pool(&**c, &pool.name, LIVE).await?
        };
        let duffy_in = json!({
            "nodes": live.iter().map(|n| json!({"id": n.id, "state": n.state.as_str(),
                "hostname": n.hostname, "ipaddr": n.ipaddr})).collect::<Vec<_>>(),
            "terminate": [],
        });
        let out = run_playbook(cfg, &runs, pool, &duffy_in).await?;
        let Some(instances) = out.get("instances").and_then(Json::as_array) else {
            return Err(ReconcileError::Pool {
                pool: pool.name.clone(),
                msg: format!("duffy_out.instances: expected a list, got {out}"),
            });
        };
        let now = chrono::Utc::now();
        let live_ids: HashSet<i64> = live.iter().map(|n| i64::from(n.id)).collect();
        let node_of = |i: &Json| -> Option<i64> {
            match &i["node_id"] {
                Json::Number(n) => n.as_i64(),
                Json::String(s) => s.parse().ok(),
                _ => None,
            }
        };
        // nodes with a running (or starting) instance
        let covered: HashSet<i64> = instances
            .iter()
            .filter(|i| matches!(i["state"].as_str(), Some("pending" | "running")))
            .filter_map(node_of)
            .collect();
        let mut terminate = Vec::new();
        let mut orphans = Vec::new();
        for i in instances {
            let node_id = node_of(i);
            if node_id.is_some_and(|n| live_ids.contains(&n)) {
                continue;
            }
            let Some(instance_id) = i["instance_id"].as_str() else {
                continue;
            };
            let age = age_secs(&i["launch_time"], now);
            let in_grace = age.is_none_or(|a| a < opts.grace.as_secs() as i64);
            let action = if in_grace {
                Action::InGrace
            } else if opts.apply {
                terminate.push(instance_id.to_string());
                Action::Done
            } else {
                Action::Would
            };
            orphans.push(Finding::Orphan {
                pool: pool.name.clone(),
                instance_id: instance_id.to_string(),
                node_id,
                age_secs: age,
                action,
            });
        }
        if !terminate.is_empty() {
            let duffy_in = json!({"nodes": duffy_in["nodes"], "terminate": terminate});
            let out = run_playbook(cfg, &runs, pool, &duffy_in).await?;
            let done: HashSet<&str> = out
                .get("terminated")
                .and_then(Json::as_array)
                .map(|a| a.iter().filter_map(Json::as_str).collect())
                .unwrap_or_default();
            let c = db.get().await?;
            for f in &mut orphans {
                if let Finding::Orphan {
                    instance_id,
                    node_id,
                    age_secs,
                    action,
                    ..
                } = f
                {
                    if *action != Action::Done {
                        continue;
                    }
                    if !done.contains(instance_id.as_str()) {
                        // the playbook did not terminate it: report it as still to do
                        *action = Action::Would;
                        continue;
                    }
                    audit::record(
                        &**c,
                        audit::Entity::Pool,
                        None,
                        "reconcile-terminate",
                        "reconcile",
                        json!({"pool": pool.name, "instance_id": instance_id,
                               "node_id": node_id, "age_secs": age_secs}),
                    )
                    .await?;
                }
            }
        }
        findings.extend(orphans);
        for n in live.iter().filter(|n| MUST_HAVE.contains(&n.state)) {
            if covered.contains(&i64::from(n.id)) {
                continue;
            }
            let mut action = Action::Would;
            if opts.apply {
                let reason = "reconcile: the node's instance is gone (terminated or missing at the provider)";
                let mut conn = db.get().await?;
                let tx = conn.transaction().await.map_err(DbError::from)?;
                let now = sessions::now_utc(&*tx).await?;
                let moved = nodes::transition(
                    &*tx,
                    &nodes::TransitionRequest::failure(
                        &[n.id],
                        MUST_HAVE,
                        Actor::Operator,
                        reason,
                        now,
                    ),
                )
                .await?;
                if moved.is_empty() {
                    // the node changed state meanwhile: nothing to do
                    continue;
                }
                audit::record(
                    &*tx,
                    audit::Entity::Node,
                    Some(n.id),
                    "reconcile-instance-gone",
                    "reconcile",
                    json!({"pool": pool.name, "from": n.state.as_str(), "reason": reason}),
                )
                .await?;
                tx.commit().await.map_err(DbError::from)?;
                action = Action::Done;
            }
            findings.push(Finding::Gone {
                pool: pool.name.clone(),
                node_id: n.id,
                state: n.state,
                action,
            });
        }
    }
    drop(runs);
    Ok(findings)
}
