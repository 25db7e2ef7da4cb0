//! `duffy scheduler`: the replacement for upstream's celery worker (compat spec §9).
//!
//! One loop per process:
//! 1. **expire** sessions whose `expires_at` passed (`expire.rs`), with a timer to the next expiry;
//! 2. **sweep** (on start, on every NOTIFY from the API, after each job, and every
//!    `scheduler.fill-interval` as a safety net): recover nodes left behind by crashes, **fill**
//!    each concrete pool to its fill level (`fill.rs`) and queue **deprovision** jobs for nodes in
//!    `deprovisioning` (`deprovision.rs`);
//! 3. **claim** runnable jobs from `duffy_jobs` (`FOR UPDATE SKIP LOCKED`, leased) and run their
//!    playbooks (`playbook.rs`) concurrently, renewing the lease meanwhile.
//!
//! Work is durable and shared: any number of schedulers may run on one database. Fill and job
//! creation are serialised per pool by advisory transaction locks, jobs by row locks and leases.
//! A scheduler killed at any moment leaves its job `running` with a lease that runs out; the next
//! claim takes it over, counting the interrupted attempt, so a job is retried or given up
//! explicitly and no node stays in `provisioning`/`deprovisioning`. No transaction is open while
//! a playbook runs.
//!
//! The daemon stops on SIGTERM/SIGINT within seconds whatever it is doing: the signal interrupts
//! the pass (its transaction rolls back), running playbooks get SIGTERM, and every job the
//! process holds is handed back (queued, the attempt not counted). A database outage is one
//! state, not a failure per pass: logged once with its cause and once with its duration when the
//! database answers again, retried every half second at most without being woken by piled-up
//! NOTIFYs; the first pass after it re-LISTENs, sweeps (events missed meanwhile are in the
//! tables) and hands back the jobs whose outcome could not be written.

pub mod deprovision;
pub mod expire;
pub mod fill;
pub mod playbook;
pub mod rundir;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use thiserror::Error;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::db::jobs::{self, Job, JobKind};
use crate::db::nodes::{self, NodeChanges, TransitionRequest};
use crate::db::{audit, sessions, Db, DbError};
use crate::events::Event;
use crate::state::{Actor, NodeState};

#[derive(Debug, Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Other(String),
}

impl SchedulerError {
    /// Is the database out of reach ([`DbError::is_unavailable`])?
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SchedulerError::Db(d) if d.is_unavailable())
    }
}

impl From<tokio_postgres::Error> for SchedulerError {
    fn from(e: tokio_postgres::Error) -> Self {
        SchedulerError::Db(e.into())
    }
}

/// Finished jobs are kept this long in `duffy_jobs`.
pub const JOB_RETENTION_DAYS: f64 = 30.0;

/// What one pass (or a `--once` run) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub sessions_expired: usize,
    pub nodes_recovered: usize,
    pub jobs_queued: usize,
    pub jobs_done: usize,
    pub jobs_retried: usize,
    pub jobs_failed: usize,
    /// nodes that provision jobs made `ready`
    pub nodes_provisioned: usize,
}

impl Report {
    fn add(&mut self, o: &Report) {
        self.sessions_expired += o.sessions_expired;
        self.nodes_recovered += o.nodes_recovered;
        self.jobs_queued += o.jobs_queued;
        self.jobs_done += o.jobs_done;
        self.jobs_retried += o.jobs_retried;
        self.jobs_failed += o.jobs_failed;
        self.nodes_provisioned += o.nodes_provisioned;
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Retried,
    Failed,
    /// another scheduler took the job over (our lease ran out)
    Lost,
}

/// `outcome` of `duffy_scheduler_jobs_total`: [`Outcome`]s, and `interrupted` (the job's
/// outcome could not be written; it is handed back or taken over).
const JOB_OUTCOMES: [&str; 5] = ["done", "retried", "failed", "lost", "interrupted"];
const PASS_RESULTS: &[&str] = &["ok", "failed", "database_unavailable"];

/// What one scheduler process counts for its `GET /metrics` (`scheduler.metrics-listen`); the
/// database-derived gauges are read at scrape time (`crate::metrics`).
pub struct SchedulerMetrics {
    /// (kind, pool, outcome) → jobs this process ran to that outcome
    jobs: crate::metrics::KeyedCounters,
    /// (pool, kind, result) → playbook run time
    playbooks: crate::metrics::KeyedHistograms,
    /// jobs running now, by kind (provision, deprovision)
    running: [std::sync::atomic::AtomicI64; 2],
    /// passes of the daemon's loop by result ([`PASS_RESULTS`])
    passes: crate::metrics::LabelledCounter,
    /// when the last pass succeeded (seconds since the epoch, 0: never)
    last_pass: std::sync::atomic::AtomicU64,
    db: crate::metrics::DbGauges,
}

impl SchedulerMetrics {
    fn new(cfg: &Config) -> SchedulerMetrics {
        let m = SchedulerMetrics {
            jobs: Default::default(),
            playbooks: crate::metrics::KeyedHistograms::new(crate::metrics::PLAYBOOK_BUCKETS),
            running: Default::default(),
            passes: crate::metrics::LabelledCounter::new(PASS_RESULTS),
            last_pass: Default::default(),
            db: Default::default(),
        };
        // every pool's counters exist from the start, so that `increase()` sees the first job
        for p in cfg.concrete_pools().filter(|p| p.mechanism.is_some()) {
            for kind in [JobKind::Provision, JobKind::Deprovision] {
                for o in JOB_OUTCOMES {
                    m.jobs.touch(&[kind.as_str(), &p.name, o]);
                }
            }
        }
        m
    }

    fn kind_index(kind: JobKind) -> usize {
        match kind {
            JobKind::Provision => 0,
            JobKind::Deprovision => 1,
        }
    }

    fn pass(&self, r: &Result<Duration, SchedulerError>) {
        match r {
            Ok(_) => {
                self.passes.inc("ok");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_pass
                    .store(now, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.is_unavailable() => self.passes.inc("database_unavailable"),
            Err(_) => self.passes.inc("failed"),
        }
    }
}

/// A running job, counted in `SchedulerMetrics::running` until dropped.
struct Running<'a>(&'a std::sync::atomic::AtomicI64);

impl<'a> Running<'a> {
    fn new(c: &'a std::sync::atomic::AtomicI64) -> Running<'a> {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Running(c)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The shared state of one scheduler process.
pub struct Scheduler {
    pub db: Db,
    pub cfg: Arc<Config>,
    /// identifies this process in `duffy_jobs.leased_by`
    pub owner: String,
    /// `{pool: max-parallel}` of the pools that limit their concurrent jobs
    limits: serde_json::Value,
    /// jobs whose outcome could not be written (the database went away mid-job): handed back
    /// as soon as the database answers again instead of waiting for their leases to run out
    interrupted: std::sync::Mutex<Vec<i64>>,
    /// `--pool`: the only pools this process fills and runs jobs for (None: all)
    pools: Option<Vec<String>>,
    /// nodes this process's provision jobs made `ready`
    pub provisioned: std::sync::atomic::AtomicUsize,
    /// deprovision jobs this process runs now (see [`start_jobs`]: one slot stays for refills)
    deprovisions: std::sync::atomic::AtomicUsize,
    /// this process's private run directories (made, and dead schedulers' swept, on first use)
    runs: std::sync::OnceLock<Result<rundir::RunDirs, String>>,
    /// pools reported as needing nodes without a provision playbook (reported once each)
    pub no_provision_reported: std::sync::Mutex<Vec<String>>,
    /// what this process counts for `GET /metrics`
    pub metrics: SchedulerMetrics,
}

impl Scheduler {
    pub fn new(db: Db, cfg: Arc<Config>) -> Scheduler {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let owner = format!(
            "{host}:{}:{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut limits = serde_json::Map::new();
        for p in cfg.concrete_pools() {
            let v = p
                .vars
                .get("max-parallel")
                .and_then(serde_yaml::Value::as_u64);
            if let Some(n) = v {
                limits.insert(p.name.clone(), json!(n.max(1)));
            }
        }
        Scheduler {
            metrics: SchedulerMetrics::new(&cfg),
            db,
            cfg,
            owner,
            limits: serde_json::Value::Object(limits),
            interrupted: Default::default(),
            pools: None,
            provisioned: Default::default(),
            deprovisions: Default::default(),
            runs: Default::default(),
            no_provision_reported: Default::default(),
        }
    }

    /// This process's run directories under `scheduler.state-dir` (see [`rundir`]): made on the
    /// first call, which also sweeps those that killed schedulers left behind.
    pub fn runs(&self) -> Result<&rundir::RunDirs, SchedulerError> {
        self.runs
            .get_or_init(|| {
                let dir = self.cfg.scheduler.state_dir();
                let r = rundir::RunDirs::open(&dir).map_err(|e| {
                    format!(
                        "scheduler.state-dir {}: cannot make its private run directory: {e}",
                        dir.display()
                    )
                })?;
                if r.swept > 0 {
                    tracing::info!(
                        swept = r.swept,
                        "removed the run directories of schedulers that were killed"
                    );
                }
                Ok(r)
            })
            .as_ref()
            .map_err(|e| SchedulerError::Other(e.clone()))
    }

    /// Run `playbook` of `pool` for `job` (its nodes `ids`) with the extra vars `vars`: the
    /// attempt's log path recorded on the job first, the output kept there with secrets masked.
    /// `Ok(Err(reason))`: the playbook failed.
    pub(crate) async fn run_playbook(
        &self,
        job: &Job,
        pool: &crate::config::Pool,
        playbook: &str,
        vars: &serde_json::Value,
        ids: &[i32],
    ) -> Result<Result<Option<serde_json::Value>, String>, SchedulerError> {
        let log_path = self.log_path(job);
        {
            let c = self.db.get().await?;
            jobs::set_log_path(&**c, job.id, &self.owner, &log_path.display().to_string()).await?;
        }
        let mech = pool.mechanism.as_ref().expect("pool with a mechanism");
        let topdir = mech.topdir.clone().unwrap_or_else(|| ".".into());
        tracing::info!(job = job.id, pool = %pool.name, nodes = ?ids, playbook, log = %log_path.display(), "running {} playbook", job.kind.as_str());
        let start = Instant::now();
        let r = playbook::run(&playbook::Run {
            ansible_playbook: &self.cfg.scheduler.ansible_playbook,
            topdir: &topdir,
            playbook,
            extra_vars: vars,
            timeout: self.cfg.scheduler.playbook_timeout.0,
            log_path: &log_path,
            runs: self.runs()?,
        })
        .await;
        self.metrics.playbooks.observe(
            &[
                &pool.name,
                job.kind.as_str(),
                if r.is_ok() { "ok" } else { "failed" },
            ],
            start.elapsed(),
        );
        Ok(r)
    }

    /// The text of the scheduler's `GET /metrics`.
    pub async fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let mut out = crate::metrics::Exposition::new();
        out.family(
            "duffy_scheduler_jobs_total",
            "counter",
            "Jobs this scheduler ran to an end, by kind, pool and outcome (done, retried: failed and queued again, failed: given up, lost: taken over by another scheduler, interrupted: the database went away).",
        );
        m.jobs.render(
            &mut out,
            "duffy_scheduler_jobs_total",
            &["kind", "pool", "outcome"],
        );
        out.family(
            "duffy_scheduler_jobs_running",
            "gauge",
            "Jobs this scheduler runs now, by kind.",
        );
        for kind in [JobKind::Provision, JobKind::Deprovision] {
            out.sample(
                "duffy_scheduler_jobs_running",
                &[("kind", kind.as_str())],
                m.running[SchedulerMetrics::kind_index(kind)].load(Relaxed) as f64,
            );
        }
        out.family(
            "duffy_playbook_duration_seconds",
            "histogram",
            "Wall-clock time of provision and deprovision playbook runs, by pool, kind and result (ok, failed: the playbook failed or timed out).",
        );
        m.playbooks.render(
            &mut out,
            "duffy_playbook_duration_seconds",
            &["pool", "kind", "result"],
        );
        out.family(
            "duffy_scheduler_passes_total",
            "counter",
            "Passes of the scheduler's loop (expire, sweep, claim), by result.",
        );
        m.passes
            .render(&mut out, "duffy_scheduler_passes_total", "result");
        out.gauge(
            "duffy_scheduler_last_successful_pass_timestamp_seconds",
            "When the scheduler's last pass succeeded, seconds since the epoch (0: none yet).",
            m.last_pass.load(Relaxed) as f64,
        );
        crate::metrics::render_common(&mut out, &self.cfg, &self.db, &m.db).await;
        out.finish()
    }

    /// Restrict this process to `pools` (`duffy scheduler --pool`; empty: every pool): only they
    /// are filled, and only their jobs are claimed (a limit of 0 running jobs for every other
    /// configured pool). Expiry, recovery and the queueing of deprovision jobs stay global:
    /// they only record work that any scheduler then runs.
    pub fn only_pools(mut self, pools: &[String]) -> Scheduler {
        if pools.is_empty() {
            return self;
        }
        if let Some(m) = self.limits.as_object_mut() {
            for p in self.cfg.concrete_pools() {
                if !pools.contains(&p.name) {
                    m.insert(p.name.clone(), json!(0));
                }
            }
        }
        self.pools = Some(pools.to_vec());
        self
    }

    /// Does this process fill `pool` and run its jobs?
    pub fn selected(&self, pool: &str) -> bool {
        self.pools
            .as_ref()
            .is_none_or(|p| p.iter().any(|x| x == pool))
    }

    fn lease_secs(&self) -> f64 {
        self.cfg.scheduler.lease.0.as_secs_f64().max(1.0)
    }

    /// Delay before retry number `attempt` (1-based): retry-delay × 2^(attempt−1), at most 1 h.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let base = self.cfg.scheduler.retry_delay.0;
        let factor = 2u32.saturating_pow((attempt.max(1) - 1).min(20) as u32);
        base.saturating_mul(factor).min(Duration::from_secs(3600))
    }

    fn max_attempts(&self) -> i32 {
        self.cfg.scheduler.max_attempts.max(1) as i32
    }

    /// Where the output of an attempt of a job is kept.
    pub fn log_path(&self, job: &Job) -> PathBuf {
        self.cfg.scheduler.job_log_dir().join(format!(
            "job-{}-{}-attempt-{}.log",
            job.id,
            job.kind.as_str(),
            job.attempts
        ))
    }

    /// Recover nodes that crashed processes left behind: `contextualizing` nodes of a crashed
    /// API (no active session, or there far too long) become `failed`; `provisioning` nodes that
    /// no job covers (crashed upstream worker) get a provision job.
    pub async fn recover(&self) -> Result<Report, SchedulerError> {
        let mut report = Report::default();
        let stale = self
            .lease_secs()
            .max(4.0 * self.cfg.contextualize.timeout.0.as_secs_f64() + 60.0);
        let mut conn = self.db.get().await?;
        let tx = conn.transaction().await?;
        jobs::lock(&*tx, "recover").await?;
        let ids = jobs::stale_contextualizing(&*tx, stale).await?;
        if !ids.is_empty() {
            let now = sessions::now_utc(&*tx).await?;
            let detail = "contextualization interrupted (API crashed?)";
            let moved = nodes::transition(
                &*tx,
                &TransitionRequest::failure(
                    &ids,
                    &[NodeState::Contextualizing],
                    Actor::Scheduler,
                    detail,
                    now,
                ),
            )
            .await?;
            for m in &moved {
                tracing::warn!(node = m.id, "{detail}: node marked failed");
            }
            report.nodes_recovered += moved.len();
        }
        let orphans = jobs::provisioning_without_job(&*tx, self.lease_secs()).await?;
        let mut by_pool: Vec<(String, Vec<i32>)> = Vec::new();
        let mut unknown = Vec::new();
        for (id, pool) in orphans {
            match pool.filter(|p| self.cfg.pool(p).is_some_and(|p| p.mechanism.is_some())) {
                Some(p) => match by_pool.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, v)) => v.push(id),
                    None => by_pool.push((p, vec![id])),
                },
                None => unknown.push(id),
            }
        }
        if !unknown.is_empty() {
            let detail = "provisioning node without a configured pool";
            nodes::transition(
                &*tx,
                &TransitionRequest {
                    node_ids: &unknown,
                    from: &[NodeState::Provisioning],
                    to: NodeState::Failed,
                    actor: Actor::Scheduler,
                    reason: Some(detail),
                    session_id: None,
                    changes: NodeChanges::default(),
                },
            )
            .await?;
            tracing::warn!(nodes = ?unknown, "{detail}: marked failed");
            report.nodes_recovered += unknown.len();
        }
        for (pool, ids) in by_pool {
            let run_parallel = self.cfg.pool(&pool).is_some_and(|p| p.run_parallel);
            let groups: Vec<Vec<i32>> = if run_parallel {
                ids.iter().map(|i| vec![*i]).collect()
            } else {
                vec![ids.clone()]
            };
            for g in groups {
                let id = jobs::enqueue(&*tx, JobKind::Provision, &pool, &g).await?;
                tracing::warn!(job = id, %pool, nodes = ?g, "provisioning nodes without a job: provision job queued");
                report.jobs_queued += 1;
                report.nodes_recovered += g.len();
            }
        }
        tx.commit().await?;
        Ok(report)
    }

    /// One sweep: recovery, fill every pool, queue deprovision jobs.
    pub async fn sweep(&self) -> Result<Report, SchedulerError> {
        {
            let c = self.db.get().await?;
            let n = jobs::prune(&**c, JOB_RETENTION_DAYS).await?;
            if n > 0 {
                tracing::info!("{n} finished jobs older than {JOB_RETENTION_DAYS} days deleted");
            }
        }
        let mut r = self.recover().await?;
        r.add(&deprovision::enqueue(self).await?);
        r.add(&fill::fill_all(self).await?);
        Ok(r)
    }

    /// Claim one runnable job, if any (only a provision job when `provision_only`).
    pub async fn claim(&self, provision_only: bool) -> Result<Option<Job>, SchedulerError> {
        let mut conn = self.db.get().await?;
        let tx = conn.transaction().await?;
        if !self.limits.as_object().is_some_and(|m| m.is_empty()) {
            // max-parallel must hold across scheduler processes
            jobs::lock(&*tx, "claim").await?;
        }
        let job = jobs::claim(
            &*tx,
            &self.owner,
            self.lease_secs(),
            &self.limits,
            provision_only,
        )
        .await?;
        if let Some(j) = &job {
            if j.taken_over {
                self.audit(
                    &*tx,
                    j,
                    "job-takeover",
                    json!({"nodes": j.node_ids, "error": j.last_error}),
                )
                .await?;
            }
        }
        tx.commit().await?;
        if let Some(j) = &job {
            if j.taken_over {
                tracing::warn!(
                    job = j.id, kind = j.kind.as_str(), pool = %j.pool, attempt = j.attempts,
                    "taking over a job whose lease expired (its scheduler died)"
                );
            } else {
                tracing::info!(job = j.id, kind = j.kind.as_str(), pool = %j.pool, nodes = ?j.node_ids, attempt = j.attempts, "job claimed");
            }
        }
        Ok(job)
    }

    /// Run a claimed job to its outcome, renewing its lease meanwhile.
    pub async fn run_job(self: &Arc<Self>, job: Job) -> Outcome {
        let _running = Running::new(&self.metrics.running[SchedulerMetrics::kind_index(job.kind)]);
        let outcome = self.run_job_inner(&job).await;
        let label = match outcome {
            Ok(Outcome::Done) => "done",
            Ok(Outcome::Retried) => "retried",
            Ok(Outcome::Failed) => "failed",
            Ok(Outcome::Lost) => "lost",
            Err(()) => "interrupted",
        };
        self.metrics
            .jobs
            .inc(&[job.kind.as_str(), &job.pool, label]);
        outcome.unwrap_or(Outcome::Lost)
    }

    /// [`Scheduler::run_job`]; `Err`: interrupted (the outcome could not be written).
    async fn run_job_inner(self: &Arc<Self>, job: &Job) -> Result<Outcome, ()> {
        let job = job.clone();
        let me = self.clone();
        let renew_every = Duration::from_secs_f64(self.lease_secs() / 3.0);
        let renew = async {
            loop {
                tokio::time::sleep(renew_every).await;
                match me.db.get().await {
                    Ok(c) => match jobs::renew(&**c, job.id, &me.owner, me.lease_secs()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job = job.id, "lease lost");
                        }
                        Err(e) => tracing::warn!(job = job.id, "renewing the lease: {e}"),
                    },
                    Err(e) => tracing::warn!(job = job.id, "renewing the lease: {e}"),
                }
            }
        };
        let work = async {
            match job.kind {
                JobKind::Provision => fill::run_provision(self, &job).await,
                JobKind::Deprovision => deprovision::run_deprovision(self, &job).await,
            }
        };
        let res = tokio::select! {
            r = work => r,
            _ = renew => unreachable!("renew loop never ends"),
        };
        match res {
            Ok(o) => {
                tracing::info!(job = job.id, kind = job.kind.as_str(), pool = %job.pool, outcome = ?o, "job finished");
                Ok(o)
            }
            Err(e) if e.is_unavailable() => {
                // the database went away mid-job: the daemon hands the job back when it answers
                // again (else, e.g. `--once`, its lease runs out and it is taken over)
                tracing::error!(
                    job = job.id,
                    "job interrupted: {e}; it is handed back (queued again) once the database answers"
                );
                self.interrupted.lock().expect("lock").push(job.id);
                Err(())
            }
            Err(e) => {
                // not an outage: the lease runs out and the job is taken over, the attempt
                // counted (so a job that keeps failing this way is given up)
                tracing::error!(
                    job = job.id,
                    "job interrupted: {e}; it is retried when its lease expires"
                );
                Err(())
            }
        }
    }

    /// Finish an attempt that failed for `failed` nodes: retry them later, or give up at
    /// max-attempts. Node transitions are done by the caller in the same transaction `c`.
    pub(crate) async fn retry_or_give_up(
        &self,
        c: &impl crate::db::GenericClient,
        job: &Job,
        failed: &[i32],
        reason: &str,
    ) -> Result<Outcome, SchedulerError> {
        let (outcome, ok) = if job.attempts < self.max_attempts() {
            let delay = self.backoff(job.attempts);
            tracing::warn!(job = job.id, pool = %job.pool, attempt = job.attempts, retry_in = ?delay, "{reason}");
            (
                Outcome::Retried,
                jobs::retry(c, job.id, &self.owner, failed, delay.as_secs_f64(), reason).await?,
            )
        } else {
            tracing::error!(job = job.id, pool = %job.pool, attempts = job.attempts, "giving up: {reason}");
            (
                Outcome::Failed,
                jobs::give_up(c, job.id, &self.owner, reason).await?,
            )
        };
        if !ok {
            return Ok(Outcome::Lost);
        }
        self.audit(
            c,
            job,
            if outcome == Outcome::Retried {
                "job-retry"
            } else {
                "job-failed"
            },
            json!({"nodes": failed, "error": reason}),
        )
        .await?;
        Ok(outcome)
    }

    /// One audit row about a job (entity `pool`).
    pub(crate) async fn audit(
        &self,
        c: &impl crate::db::GenericClient,
        job: &Job,
        action: &str,
        mut detail: serde_json::Value,
    ) -> Result<(), SchedulerError> {
        if let Some(m) = detail.as_object_mut() {
            m.insert("pool".into(), json!(job.pool));
            m.insert("job".into(), json!(job.id));
            m.insert("kind".into(), json!(job.kind.as_str()));
            m.insert("attempt".into(), json!(job.attempts));
        }
        audit::record(c, audit::Entity::Pool, None, action, "scheduler", detail).await?;
        Ok(())
    }

    /// A job whose nodes are all gone (handled meanwhile, deleted): done, unless its lease was
    /// lost to another scheduler.
    pub(crate) async fn finish_without_nodes(&self, job: &Job) -> Result<Outcome, SchedulerError> {
        let c = self.db.get().await?;
        Ok(if jobs::finish(&**c, job.id, &self.owner).await? {
            Outcome::Done
        } else {
            Outcome::Lost
        })
    }

    /// Did the job give up before we even start (interrupted attempts used up)?
    pub(crate) fn exhausted(&self, job: &Job) -> bool {
        job.attempts > self.max_attempts()
    }
}

/// A deprovision job of this process, counted in `Scheduler::deprovisions` from its claim
/// until its task ends (also when the task is aborted).
struct Teardown(Arc<Scheduler>);

impl Teardown {
    fn new(s: &Arc<Scheduler>) -> Teardown {
        s.deprovisions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Teardown(s.clone())
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.0
            .deprovisions
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Claim runnable jobs and start them until `max` run at once (or none is left). Deprovision
/// jobs take at most `max - 1` slots (when `max` > 1): a backlog of teardowns never leaves a
/// pool below its fill level waiting for a free slot.
async fn start_jobs(
    s: &Arc<Scheduler>,
    set: &mut JoinSet<Outcome>,
    max: usize,
) -> Result<(), SchedulerError> {
    while set.len() < max {
        let teardowns = s.deprovisions.load(std::sync::atomic::Ordering::SeqCst);
        let provision_only = max > 1 && teardowns >= max - 1;
        let Some(job) = s.claim(provision_only).await? else {
            break;
        };
        let teardown = (job.kind == JobKind::Deprovision).then(|| Teardown::new(s));
        let s2 = s.clone();
        set.spawn(async move {
            let _teardown = teardown;
            s2.run_job(job).await
        });
    }
    Ok(())
}

/// Run one pass and every job it makes runnable, then return (`duffy scheduler --once`).
pub async fn run_once(s: Arc<Scheduler>) -> Result<Report, SchedulerError> {
    let mut report = Report::default();
    report.sessions_expired += expire::expire_due(&s).await?;
    report.add(&s.sweep().await?);
    let max = s.cfg.scheduler.max_jobs.max(1) as usize;
    let mut set: JoinSet<Outcome> = JoinSet::new();
    loop {
        start_jobs(&s, &mut set, max).await?;
        match set.join_next().await {
            Some(r) => count(&mut report, r),
            None => break,
        }
    }
    report.nodes_provisioned = s.provisioned.load(std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

fn count(report: &mut Report, r: Result<Outcome, tokio::task::JoinError>) {
    match r {
        Ok(Outcome::Done) => report.jobs_done += 1,
        Ok(Outcome::Retried) => report.jobs_retried += 1,
        Ok(Outcome::Failed) => report.jobs_failed += 1,
        Ok(Outcome::Lost) => {}
        Err(e) => tracing::error!("job task failed: {e}"),
    }
}

/// A NOTIFY payload, described for the log.
fn describe_event(payload: &str) -> String {
    match serde_json::from_str::<Event>(payload) {
        Ok(Event::SessionCreated { session_id, pools }) => {
            format!("session {session_id} created (pools {pools:?})")
        }
        Ok(Event::SessionRetired {
            session_id,
            node_ids,
        }) => format!("session {session_id} retired (nodes {node_ids:?})"),
        Ok(Event::SessionFailed { pools }) => format!("session creation failed (pools {pools:?})"),
        Ok(Event::NodesChanged { node_ids, pools }) => {
            format!("nodes {node_ids:?} changed by an operator (pools {pools:?})")
        }
        Err(_) => format!("event {payload:?}"),
    }
}

/// First delay before a pass is retried after the database went away; doubled per failure up
/// to [`OUTAGE_RETRY_MAX`], so the scheduler is back at most that long after the database.
const OUTAGE_RETRY_MIN: Duration = Duration::from_millis(100);
const OUTAGE_RETRY_MAX: Duration = Duration::from_millis(500);
/// Retry delays after a pass failed while the database answered (doubled up to the maximum).
const FAILED_RETRY_MIN: Duration = Duration::from_millis(500);
const FAILED_RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a stopping scheduler tries to hand its jobs back (their leases cover the rest).
const HANDBACK_LIMIT: Duration = Duration::from_secs(3);

/// Resolves once SIGTERM or SIGINT was received (at once if it already was).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The daemon: run until SIGINT/SIGTERM.
///
/// A signal interrupts whatever the loop is doing (a pass is dropped mid-way: its open
/// transaction rolls back), aborts the running jobs (their playbooks get SIGTERM) and hands
/// every job this process holds back, within [`HANDBACK_LIMIT`]. A pass that fails because the
/// database is out of reach starts an *outage*: one log line with the cause, retries every
/// [`OUTAGE_RETRY_MAX`] at most (NOTIFYs and finished jobs do not wake the loop meanwhile),
/// then one line with its duration when a pass succeeds again — which re-LISTENs and sweeps,
/// so what happened meanwhile is picked up from the tables.
pub async fn run_daemon(s: Arc<Scheduler>, url: String) -> Result<(), SchedulerError> {
    let channel = s.cfg.events.channel.clone();
    let fill_interval = s.cfg.scheduler.fill_interval.0.max(Duration::from_secs(1));
    let expire_interval = s
        .cfg
        .scheduler
        .expire_interval
        .0
        .max(Duration::from_secs(1));
    let max = s.cfg.scheduler.max_jobs.max(1) as usize;
    let mut listener: Option<jobs::Listener> = None;
    // why the LISTEN connection was lost, until it is re-established
    let mut listen_lost: Option<String> = None;
    // LISTEN refused by a database that otherwise answers (logged once)
    let mut listen_refused = false;
    let mut set: JoinSet<Outcome> = JoinSet::new();
    let mut next_sweep = Instant::now();
    let mut sweep_now = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| SchedulerError::Other(format!("signal handler: {e}")))?;
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    // the event bus delivers on its own task, with its own LISTEN connection (`crate::bus`)
    let bus = s.cfg.events.beanstalkd.clone().map(|b| {
        let (db, url, stop) = (s.db.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::bus::enable(&db).await {
                tracing::debug!("event bus: enabling: {e}");
            }
            crate::bus::run(db, url, b, stop).await
        })
    });
    // since when and why the database is out of reach
    let mut outage: Option<(Instant, String)> = None;
    let mut outage_retry = OUTAGE_RETRY_MIN;
    let mut failed_retry = FAILED_RETRY_MIN;
    tracing::info!(owner = %s.owner, "scheduler started");
    // `reconcile-interval`: `duffy reconcile --apply` on a timer of its own, beside the loop (its
    // playbooks take a while); it ends with the process
    let reconciler = s.cfg.scheduler.reconcile_interval.map(|iv| {
        let s = s.clone();
        tokio::spawn(async move {
            let opts = crate::reconcile::Options {
                apply: true,
                pools: s.pools.clone().unwrap_or_default(),
                grace: s.cfg.scheduler.reconcile_grace.0,
            };
            let iv = iv.0.max(Duration::from_secs(1));
            loop {
                tokio::time::sleep(iv).await;
                match crate::reconcile::run(&s.cfg, &s.db, &opts).await {
                    Ok(findings) => {
                        for f in findings {
                            tracing::warn!("reconcile: {f}");
                        }
                    }
                    Err(e) => tracing::error!("reconcile: {e}"),
                }
            }
        })
    });
    'run: loop {
        let pass = async {
            if listener.is_none() {
                match jobs::listen(&url, &channel).await {
                    Ok(l) => {
                        listener = Some(l);
                        // events may have been missed while not listening
                        sweep_now = true;
                        if let Some(why) = listen_lost.take() {
                            if outage.is_none() {
                                tracing::warn!("LISTEN connection lost ({why}); re-established");
                            }
                        }
                        listen_refused = false;
                    }
                    Err(e) if e.is_unavailable() => return Err(e.into()),
                    Err(e) => {
                        // the database answers (e.g. too many connections): work on timers
                        if !listen_refused {
                            tracing::warn!(
                                "LISTEN {channel}: {e}; working on timers until it succeeds"
                            );
                            listen_refused = true;
                        }
                    }
                }
            }
            let orphans = std::mem::take(&mut *s.interrupted.lock().expect("lock"));
            if !orphans.is_empty() {
                let c = s.db.get().await;
                let released = match c {
                    Ok(c) => jobs::release(&**c, &s.owner, Some(&orphans)).await,
                    Err(e) => Err(e),
                };
                match released {
                    Ok(ids) => {
                        for id in ids {
                            tracing::info!(job = id, "interrupted job handed back");
                        }
                    }
                    Err(e) => {
                        s.interrupted.lock().expect("lock").extend(orphans);
                        return Err(e.into());
                    }
                }
            }
            let expired = expire::expire_due(&s).await?;
            if expired > 0 {
                sweep_now = true;
            }
            if sweep_now || Instant::now() >= next_sweep {
                s.sweep().await?;
                sweep_now = false;
                next_sweep = Instant::now() + fill_interval;
            }
            start_jobs(&s, &mut set, max).await?;
            let c = s.db.get().await?;
            let mut wait = next_sweep.saturating_duration_since(Instant::now());
            wait = wait.min(expire_interval);
            if let Some(secs) = jobs::next_expiry_secs(&**c).await? {
                // ≤ 0: due but not retired by this pass (locked meanwhile): look again shortly
                wait = wait.min(Duration::from_secs_f64(secs.max(0.1)));
            }
            if set.len() < max {
                if let Some(secs) = jobs::next_due_secs(&**c).await? {
                    // due but not claimable (max-parallel, another scheduler's claim): look again
                    // in a second; our own jobs' completion wakes us earlier anyway
                    let secs = if secs <= 0.0 { 1.0 } else { secs };
                    wait = wait.min(Duration::from_secs_f64(secs));
                }
            }
            Ok::<Duration, SchedulerError>(wait)
        };
        let res = tokio::select! {
            r = pass => r,
            _ = stopped(&mut stop) => break 'run,
        };
        s.metrics.pass(&res);
        let wait = match res {
            Ok(w) => {
                if let Some((since, _)) = outage.take() {
                    tracing::warn!(
                        "database {} available again after {:.1?} out of reach: LISTEN re-established, tables swept",
                        s.db.target(),
                        since.elapsed()
                    );
                }
                outage_retry = OUTAGE_RETRY_MIN;
                failed_retry = FAILED_RETRY_MIN;
                w
            }
            Err(e) => {
                sweep_now = true;
                if e.is_unavailable() {
                    let why = match listen_lost.take() {
                        Some(l) => format!("{e} (LISTEN connection lost: {l})"),
                        None => e.to_string(),
                    };
                    if outage.is_none() {
                        tracing::error!(
                            "database {} unavailable: {why}; retrying every {OUTAGE_RETRY_MAX:?} until it answers",
                            s.db.target()
                        );
                        outage = Some((Instant::now(), why));
                    } else {
                        tracing::debug!("database still unavailable: {why}");
                    }
                    let w = outage_retry;
                    outage_retry = (outage_retry * 2).min(OUTAGE_RETRY_MAX);
                    w
                } else {
                    let w = failed_retry;
                    tracing::error!("scheduler pass failed: {e}; retrying in {w:?}");
                    failed_retry = (failed_retry * 2).min(FAILED_RETRY_MAX);
                    w
                }
            }
        };
        // a little slack so that a timer for "now" does not spin
        let deadline = tokio::time::Instant::now() + wait.max(Duration::from_millis(20));
        // during an outage only the timer (and a signal) ends the wait: piled-up NOTIFYs and
        // finished jobs are noted for the next pass, they do not each start one
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                heard = jobs::heard(&mut listener) => match heard {
                    Some(jobs::Heard::Notify(first)) => {
                        // every event waiting is handled by one pass
                        let mut more = 0;
                        while let Some(l) = listener.as_mut() {
                            match l.rx.try_recv() {
                                Ok(jobs::Heard::Notify(_)) => more += 1,
                                Ok(jobs::Heard::Lost(why)) => {
                                    listener = None;
                                    listen_lost = Some(why);
                                }
                                Err(_) => break,
                            }
                        }
                        let and = if more > 0 { format!(" (and {more} more events)") } else { String::new() };
                        tracing::info!("woken: {}{and}", describe_event(&first));
                        sweep_now = true;
                        if outage.is_none() {
                            break;
                        }
                    }
                    Some(jobs::Heard::Lost(why)) => {
                        listener = None;
                        listen_lost = Some(why);
                        break;
                    }
                    None => {
                        listener = None;
                        listen_lost = Some("connection closed".into());
                        break;
                    }
                },
                Some(r) = set.join_next(), if !set.is_empty() => {
                    let mut rep = Report::default();
                    count(&mut rep, r);
                    // a finished job may free reusable nodes or leave a pool short
                    sweep_now = true;
                    if outage.is_none() {
                        break;
                    }
                }
                _ = stopped(&mut stop) => break 'run,
            }
        }
    }
    if let Some(r) = reconciler {
        r.abort();
    }
    shutdown(&s, set).await;
    if let Some(bus) = bus {
        // it stops at its next wait; a delivery in flight gets a moment to commit its cursor
        let _ = tokio::time::timeout(Duration::from_secs(2), bus).await;
    }
    Ok(())
}

/// Stop: abort the running jobs (dropping a playbook's run sends it SIGTERM), then hand back
/// every job this process holds — running ones, and any claimed by the interrupted pass — so
/// that the next scheduler runs them at once, with the interrupted attempt not counted.
async fn shutdown(s: &Scheduler, mut set: JoinSet<Outcome>) {
    tracing::info!(
        running = set.len(),
        "scheduler stopping: running jobs interrupted and handed back"
    );
    set.abort_all();
    while set.join_next().await.is_some() {}
    let handback = async {
        let c = s.db.get().await?;
        jobs::release(&**c, &s.owner, None).await
    };
    match tokio::time::timeout(HANDBACK_LIMIT, handback).await {
        Ok(Ok(ids)) => {
            for id in ids {
                tracing::info!(job = id, "job handed back");
            }
        }
        Ok(Err(e)) => tracing::warn!(
            "handing jobs back: {e}; they are taken over when their leases expire"
        ),
        Err(_) => tracing::warn!(
            "handing jobs back: no answer from the database within {HANDBACK_LIMIT:?}; they are taken over when their leases expire"
        ),
    }
}
