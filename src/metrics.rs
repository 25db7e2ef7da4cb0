//! Prometheus metrics of `duffy serve` and `duffy scheduler`: the one metrics module both use.
//!
//! A small hand-written implementation of the text exposition format (version 0.0.4) rather
//! than a client crate: duffy's metric families are few and fixed, most of them are read from
//! PostgreSQL or `/proc` at scrape time, and the request path needs nothing but a few atomics.
//!
//! * **Request path** ([`RequestMetrics`]): per (route template, method, status) a
//!   [`Histogram`] found by index in a table made at start — no hashing, no lock, no
//!   allocation after the first request of a combination: one `Instant` pair and two atomic
//!   adds per request. The route label is always the template (`/api/v1/pools/{name}`), never
//!   the raw path, so the number of series is bounded by the table.
//! * **Scrape time** ([`DbGauges`]): nodes per pool and state, pool fill (the scheduler's own
//!   rule, `db::metrics`), active sessions per tenant and expired sessions not yet retired come
//!   from one query, whose result is kept [`DB_GAUGES_TTL`]: however many scrapes arrive, the
//!   database sees at most one such query per interval and process. A failed query is reported
//!   as `duffy_metrics_database_up 0` (and the gauges left out), not as a failed scrape.
//! * **Process** ([`process`]): the standard `process_*` metrics from `/proc/self`.
//!
//! Names follow Prometheus' conventions: `duffy_` prefix, base units (`_seconds`, `_bytes`),
//! `_total` for counters, snake-case labels. What each side exposes, and the alerts and the
//! dashboard built on them, are in the README (Operating duffy → Monitoring) and `etc/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};

use crate::config::Config;
use crate::db::metrics::Snapshot;
use crate::db::Db;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the database-derived gauges are reused between scrapes.
pub const DB_GAUGES_TTL: Duration = Duration::from_secs(5);

/// How long the scrape-time query may take before the scrape reports the database down.
const DB_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Buckets (seconds) of HTTP request latency.
pub const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets (seconds) of session allocation (includes SSH contextualization).
pub const ALLOCATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets (seconds) of playbook runs (provisioning a VM or reinstalling metal: minutes).
pub const PLAYBOOK_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// A histogram with fixed bucket bounds (seconds): one atomic per bucket (not cumulative; the
/// overflow bucket last) and the sum in nanoseconds. The count is the buckets' total, so a
/// scrape never sees `_count` disagree with the `+Inf` bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// the bounds in nanoseconds, for the comparison on the hot path
    bounds_ns: Box<[u64]>,
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Count one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Cumulative bucket counts (the `+Inf` one last), sum in seconds.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cum = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cum, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

/// A text exposition being written: families in order, each with its HELP and TYPE once.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// One metric's labels, in order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Start a family: `# HELP` and `# TYPE` (`counter`, `gauge`, `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: Labels, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&fmt_value(value));
        self.out.push('\n');
    }

    /// A family with one gauge sample and no labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// The samples of one histogram of the current family (`name` without suffix).
    pub fn histogram(&mut self, name: &str, labels: Labels, h: &Histogram) {
        let (cum, sum) = h.snapshot();
        let bucket = format!("{name}_bucket");
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        let les: Vec<String> = h.bounds.iter().map(|b| fmt_value(*b)).collect();
        for (i, n) in cum.iter().enumerate() {
            let le = les.get(i).map(String::as_str).unwrap_or("+Inf");
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, *n as f64);
            with_le.pop();
        }
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(
            &format!("{name}_count"),
            labels,
            *cum.last().unwrap_or(&0) as f64,
        );
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Methods with a label of their own; anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];

/// Statuses with a slot in the table; others (never answered by duffy today) go through a
/// small locked map.
const STATUSES: [u16; 22] = [
    200, 201, 204, 301, 302, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 429, 500,
    502, 503, 504,
];

fn method_index(m: &Method) -> usize {
    METHODS[..7]
        .iter()
        .position(|x| *x == m.as_str())
        .unwrap_or(7)
}

/// Requests of one HTTP API (`api` label): count and latency per (route template, method,
/// status). Routes are the API's own table of templates, indexed by the caller.
pub struct RequestMetrics {
    api: &'static str,
    routes: &'static [&'static str],
    cells: Box<[OnceLock<Box<Histogram>>]>,
    /// (route, method, status) outside [`STATUSES`]
    rare: Mutex<BTreeMap<(usize, usize, u16), Arc<Histogram>>>,
}

impl RequestMetrics {
    pub fn new(api: &'static str, routes: &'static [&'static str]) -> RequestMetrics {
        let n = routes.len() * METHODS.len() * STATUSES.len();
        RequestMetrics {
            api,
            routes,
            cells: (0..n).map(|_| OnceLock::new()).collect(),
            rare: Mutex::default(),
        }
    }

    /// Count a request to route number `route` (an index into the templates) answered with
    /// `status` after `elapsed`. Out-of-range routes count as the last template.
    pub fn observe(&self, route: usize, method: &Method, status: StatusCode, elapsed: Duration) {
        let route = route.min(self.routes.len() - 1);
        let m = method_index(method);
        match STATUSES.iter().position(|s| *s == status.as_u16()) {
            Some(s) => {
                let i = (route * METHODS.len() + m) * STATUSES.len() + s;
                self.cells[i]
                    .get_or_init(|| Box::new(Histogram::new(HTTP_BUCKETS)))
                    .observe(elapsed);
            }
            None => {
                let h = self
                    .rare
                    .lock()
                    .expect("metrics table")
                    .entry((route, m, status.as_u16()))
                    .or_insert_with(|| Arc::new(Histogram::new(HTTP_BUCKETS)))
                    .clone();
                h.observe(elapsed);
            }
        }
    }

    /// How many requests matched `route` (a template), any method and status.
    pub fn count_for(&self, route: &str) -> u64 {
        let mut n = 0;
        self.visit(|r, _, _, h| {
            if r == route {
                n += h.count();
            }
        });
        n
    }

    fn visit(&self, mut f: impl FnMut(&str, &str, u16, &Histogram)) {
        for (i, c) in self.cells.iter().enumerate() {
            if let Some(h) = c.get() {
                let s = i % STATUSES.len();
                let m = (i / STATUSES.len()) % METHODS.len();
                let r = i / STATUSES.len() / METHODS.len();
                f(self.routes[r], METHODS[m], STATUSES[s], h);
            }
        }
        let rare: Vec<_> = self
            .rare
            .lock()
            .expect("metrics table")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for ((r, m, s), h) in rare {
            f(self.routes[r], METHODS[m], s, &h);
        }
    }
}

/// Write the request families of `apis` (`duffy_http_requests_total`,
/// `duffy_http_request_duration_seconds`).
pub fn render_requests(out: &mut Exposition, apis: &[&RequestMetrics]) {
    out.family(
        "duffy_http_requests_total",
        "counter",
        "HTTP requests answered, by API, route template, method and status.",
    );
    for a in apis {
        a.visit(|route, method, status, h| {
            let status = status.to_string();
            out.sample(
                "duffy_http_requests_total",
                &[
                    ("api", a.api),
                    ("route", route),
                    ("method", method),
                    ("status", &status),
                ],
                h.count() as f64,
            );
        });
    }
    out.family(
        "duffy_http_request_duration_seconds",
        "histogram",
        "Time from a request's head to its response's head, by API, route template, method and status.",
    );
    for a in apis {
        a.visit(|route, method, status, h| {
            let status = status.to_string();
            out.histogram(
                "duffy_http_request_duration_seconds",
                &[
                    ("api", a.api),
                    ("route", route),
                    ("method", method),
                    ("status", &status),
                ],
                h,
            );
        });
    }
}

/// Counters with a small fixed set of label values (e.g. `reason`), one atomic each.
#[derive(Debug)]
pub struct LabelledCounter {
    values: &'static [&'static str],
    counts: Box<[AtomicU64]>,
}

impl LabelledCounter {
    pub fn new(values: &'static [&'static str]) -> LabelledCounter {
        LabelledCounter {
            values,
            counts: values.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Add one to label value `value` (which must be one of the declared values).
    pub fn inc(&self, value: &str) {
        if let Some(i) = self.values.iter().position(|v| *v == value) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        } else {
            debug_assert!(false, "undeclared label value {value}");
        }
    }

    pub fn get(&self, value: &str) -> u64 {
        self.values
            .iter()
            .position(|v| *v == value)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Write every value (zeros included) as samples of `name` with label `label`.
    pub fn render(&self, out: &mut Exposition, name: &str, label: &str) {
        for (v, c) in self.values.iter().zip(self.counts.iter()) {
            out.sample(name, &[(label, v)], c.load(Ordering::Relaxed) as f64);
        }
    }
}

/// Histograms and counters keyed by a few label values known only at run time (pool names):
/// behind a mutex, for paths where a lock costs nothing next to the work (a playbook run).
#[derive(Debug)]
pub struct KeyedHistograms {
    bounds: &'static [f64],
    map: Mutex<BTreeMap<Vec<String>, Arc<Histogram>>>,
}

impl KeyedHistograms {
    pub fn new(bounds: &'static [f64]) -> KeyedHistograms {
        KeyedHistograms {
            bounds,
            map: Mutex::default(),
        }
    }

    pub fn observe(&self, key: &[&str], d: Duration) {
        let h = self
            .map
            .lock()
            .expect("metrics table")
            .entry(key.iter().map(|s| s.to_string()).collect())
            .or_insert_with(|| Arc::new(Histogram::new(self.bounds)))
            .clone();
        h.observe(d);
    }

    /// Write the histograms as `name` with label names `labels` (one per key part).
    pub fn render(&self, out: &mut Exposition, name: &str, labels: &[&str]) {
        let all: Vec<_> = self
            .map
            .lock()
            .expect("metrics table")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, h) in all {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .copied()
                .zip(k.iter().map(String::as_str))
                .collect();
            out.histogram(name, &l, &h);
        }
    }
}

/// Counters keyed by label values known only at run time (behind a mutex; see
/// [`KeyedHistograms`]).
#[derive(Debug, Default)]
pub struct KeyedCounters {
    map: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl KeyedCounters {
    pub fn inc(&self, key: &[&str]) {
        *self
            .map
            .lock()
            .expect("metrics table")
            .entry(key.iter().map(|s| s.to_string()).collect())
            .or_default() += 1;
    }

    /// Make `key` appear (with 0) before anything happened, so that `increase()` sees its start.
    pub fn touch(&self, key: &[&str]) {
        self.map
            .lock()
            .expect("metrics table")
            .entry(key.iter().map(|s| s.to_string()).collect())
            .or_default();
    }

    pub fn render(&self, out: &mut Exposition, name: &str, labels: &[&str]) {
        let all: Vec<_> = self
            .map
            .lock()
            .expect("metrics table")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (k, v) in all {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .copied()
                .zip(k.iter().map(String::as_str))
                .collect();
            out.sample(name, &l, v as f64);
        }
    }
}

/// What the scrape-time query gave (an error as text).
pub type SnapshotResult = Arc<Result<Snapshot, String>>;

/// The database-derived gauges, computed at scrape time and reused for [`DB_GAUGES_TTL`].
#[derive(Default)]
pub struct DbGauges {
    /// when the last query ran and what it gave
    cache: tokio::sync::Mutex<Option<(Instant, SnapshotResult)>>,
}

impl DbGauges {
    /// The current snapshot: the cached one while fresh, else one query (concurrent scrapes
    /// wait for it and share it).
    pub async fn get(&self, db: &Db) -> SnapshotResult {
        let mut c = self.cache.lock().await;
        if let Some((at, s)) = c.as_ref() {
            if at.elapsed() < DB_GAUGES_TTL {
                return s.clone();
            }
        }
        let q = async {
            let conn = db.get().await.map_err(|e| e.to_string())?;
            crate::db::metrics::snapshot(&**conn)
                .await
                .map_err(|e| e.to_string())
        };
        let r = match tokio::time::timeout(DB_QUERY_TIMEOUT, q).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {DB_QUERY_TIMEOUT:?}")),
        };
        if let Err(e) = &r {
            tracing::warn!("metrics: database gauges not available: {e}");
        }
        let r = Arc::new(r);
        *c = Some((Instant::now(), r.clone()));
        r
    }
}

/// Write what both processes expose: build info, the database gauges (nodes per pool and
/// state, pool fill level / filled / deficit, sessions per tenant, expired sessions not
/// retired), the connection pool and the process metrics.
pub async fn render_common(out: &mut Exposition, cfg: &Config, db: &Db, gauges: &DbGauges) {
    out.family(
        "duffy_build_info",
        "gauge",
        "Always 1; the running duffy's version in a label.",
    );
    out.sample(
        "duffy_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let snap = gauges.get(db).await;
    out.gauge(
        "duffy_metrics_database_up",
        "1 when the scrape-time database query succeeded (the duffy_nodes, duffy_pool_* and duffy_sessions_* gauges are then present), else 0.",
        if snap.is_ok() { 1.0 } else { 0.0 },
    );
    if let Ok(s) = snap.as_ref() {
        render_snapshot(out, cfg, s);
    }
    let st = db.pool_status();
    out.family(
        "duffy_db_pool_connections",
        "gauge",
        "Open database connections of this process's pool, by state (in_use, idle).",
    );
    let idle = st.available as f64;
    let in_use = st.size.saturating_sub(st.available) as f64;
    out.sample("duffy_db_pool_connections", &[("state", "in_use")], in_use);
    out.sample("duffy_db_pool_connections", &[("state", "idle")], idle);
    out.gauge(
        "duffy_db_pool_max_connections",
        "Most database connections this process's pool opens.",
        st.max_size as f64,
    );
    out.gauge(
        "duffy_db_pool_waiting_tasks",
        "Tasks of this process waiting for a database connection.",
        st.waiting as f64,
    );
    process::render(out);
}

fn render_snapshot(out: &mut Exposition, cfg: &Config, s: &Snapshot) {
    use crate::state::NodeState;
    // every configured pool shows every state (0 included), so that rules compare numbers
    // instead of a series that appears and disappears
    let mut nodes: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for p in cfg.concrete_pools() {
        for st in NodeState::ALL {
            nodes.insert((p.name.clone(), st.as_str()), 0);
        }
    }
    for (pool, state, n) in &s.nodes {
        let st = NodeState::ALL
            .iter()
            .find(|x| x.as_str() == state)
            .map_or("unknown", |x| x.as_str());
        *nodes
            .entry((pool.clone().unwrap_or_default(), st))
            .or_default() += n;
    }
    out.family(
        "duffy_nodes",
        "gauge",
        "Nodes not retired, by pool and state (pool \"\": unused reusable nodes in no pool).",
    );
    for ((pool, state), n) in &nodes {
        out.sample(
            "duffy_nodes",
            &[("pool", pool), ("state", state)],
            *n as f64,
        );
    }
    let filled: BTreeMap<&str, i64> = s.filled.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let levels: Vec<(&str, i64, i64)> = cfg
        .concrete_pools()
        .filter_map(|p| {
            p.fill_level.map(|l| {
                let f = filled.get(p.name.as_str()).copied().unwrap_or(0);
                (p.name.as_str(), i64::from(l), f)
            })
        })
        .collect();
    out.family(
        "duffy_pool_fill_level",
        "gauge",
        "Configured fill level of each concrete pool that has one.",
    );
    for (p, l, _) in &levels {
        out.sample("duffy_pool_fill_level", &[("pool", p)], *l as f64);
    }
    out.family(
        "duffy_pool_filled_nodes",
        "gauge",
        "Nodes that count towards a pool's fill level (ready, provisioning, failed with a provision job still open), as the scheduler counts them.",
    );
    for (p, _, f) in &levels {
        out.sample("duffy_pool_filled_nodes", &[("pool", p)], *f as f64);
    }
    out.family(
        "duffy_pool_deficit_nodes",
        "gauge",
        "Nodes a pool lacks to reach its fill level (0 when at or above it).",
    );
    for (p, l, f) in &levels {
        out.sample(
            "duffy_pool_deficit_nodes",
            &[("pool", p)],
            (l - f).max(0) as f64,
        );
    }
    out.family(
        "duffy_sessions_active",
        "gauge",
        "Active (not retired) sessions, by tenant (every tenant not retired, 0 included).",
    );
    for (t, n) in &s.sessions {
        out.sample("duffy_sessions_active", &[("tenant", t)], *n as f64);
    }
    out.gauge(
        "duffy_sessions_expired_unretired",
        "Active sessions whose expiry time has passed (the scheduler retires them within its expire interval).",
        s.expired as f64,
    );
    out.gauge(
        "duffy_sessions_expired_unretired_max_age_seconds",
        "How long ago the longest-expired active session expired (0 when none).",
        s.expired_max_age_secs,
    );
}

/// The standard process metrics (`process_*`) from `/proc/self`.
pub mod process {
    use super::Exposition;

    /// (utime + stime in seconds, start time since the epoch, virtual bytes, resident bytes)
    fn stat() -> Option<(f64, f64, f64, f64)> {
        let s = std::fs::read_to_string("/proc/self/stat").ok()?;
        // the command name may hold spaces and parentheses: fields start after the last ')'
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest starts with field 3 (state): field N is f[N - 3]
        let num = |n: usize| f.get(n - 3)?.parse::<f64>().ok();
        // SAFETY: sysconf has no preconditions
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let btime = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        Some((
            (num(14)? + num(15)?) / tck,
            btime + num(22)? / tck,
            num(23)?,
            num(24)? * page,
        ))
    }

    fn max_fds() -> Option<f64> {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: r is a valid rlimit
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0).then_some(r.rlim_cur as f64)
    }

    pub fn render(out: &mut Exposition) {
        if let Some((cpu, start, virt, rss)) = stat() {
            out.family(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            out.sample("process_cpu_seconds_total", &[], cpu);
            out.gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                start,
            );
            out.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                virt,
            );
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            // the directory handle itself is one of them
            let n = d.count().saturating_sub(1);
            out.gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                n as f64,
            );
        }
        if let Some(m) = max_fds() {
            out.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                m,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_is_their_total() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le="0.001"
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let mut e = Exposition::new();
        e.family("x_seconds", "histogram", "h");
        e.histogram("x_seconds", &[("a", "b\"c")], &h);
        let t = e.finish();
        assert!(
            t.contains("x_seconds_bucket{a=\"b\\\"c\",le=\"0.001\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{a=\"b\\\"c\",le=\"0.01\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{a=\"b\\\"c\",le=\"+Inf\"} 4\n"),
            "{t}"
        );
        assert!(t.contains("x_seconds_count{a=\"b\\\"c\"} 4\n"), "{t}");
        assert!(t.contains("x_seconds_sum{a=\"b\\\"c\"} 2.0065\n"), "{t}");
    }

    #[test]
    fn request_table_labels_templates_methods_and_statuses() {
        static ROUTES: [&str; 2] = ["/a/{id}", "unmatched"];
        let m = RequestMetrics::new("v1", &ROUTES);
        let d = Duration::from_millis(1);
        m.observe(0, &Method::GET, StatusCode::OK, d);
        m.observe(0, &Method::GET, StatusCode::OK, d);
        m.observe(
            0,
            &Method::from_bytes(b"BREW").unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            d,
        );
        m.observe(7, &Method::GET, StatusCode::IM_A_TEAPOT, d);
        let mut e = Exposition::new();
        render_requests(&mut e, &[&m]);
        let t = e.finish();
        for want in [
            "duffy_http_requests_total{api=\"v1\",route=\"/a/{id}\",method=\"GET\",status=\"200\"} 2\n",
            "duffy_http_requests_total{api=\"v1\",route=\"/a/{id}\",method=\"other\",status=\"405\"} 1\n",
            "duffy_http_requests_total{api=\"v1\",route=\"unmatched\",method=\"GET\",status=\"418\"} 1\n",
        ] {
            assert!(t.contains(want), "{want} not in {t}");
        }
        assert_eq!(m.count_for("/a/{id}"), 3);
    }

    #[test]
    fn values_are_formatted_as_prometheus_reads_them() {
        assert_eq!(fmt_value(3.0), "3");
        assert_eq!(fmt_value(0.25), "0.25");
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
    }

    #[test]
    fn process_metrics_are_read() {
        let mut e = Exposition::new();
        process::render(&mut e);
        let t = e.finish();
        for name in [
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(t.contains(name), "{name} missing: {t}");
        }
    }
}
