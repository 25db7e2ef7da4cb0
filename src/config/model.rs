//! Typed configuration sections: upstream's keys (compat spec §7.2) and duffy's own sections.
//! Unknown keys are rejected except in maps upstream declares open.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_yaml::{Mapping, Value};

use super::{pools, secrets, ConfigError, RawConfig, ENV_DATABASE_URL};
use crate::duration::parse_config_duration;

/// Top-level keys accepted, in the order upstream documents them, then duffy's own.
pub const UPSTREAM_SECTIONS: [&str; 7] = [
    "client",
    "app",
    "tasks",
    "database",
    "defaults",
    "metaclient",
    "nodepools",
];
pub const DUFFY_SECTIONS: [&str; 6] = [
    "scheduler",
    "inventory",
    "ipmi",
    "events",
    "contextualize",
    "legacy-import",
];

/// A duration in a config file: `6h`, `1h30m`, `90`, `21600` (compat spec §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        match &v {
            Value::Number(n) => {
                // try_from: a huge number (`1e300`) must be an error, not a panic
                n.as_f64()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .map(ConfigDuration)
                    .ok_or_else(|| {
                        D::Error::custom(format!(
                            "expected a duration (a number of seconds >= 0), got {n}"
                        ))
                    })
            }
            Value::String(s) => parse_config_duration(s).map(ConfigDuration).map_err(|_| {
                D::Error::custom(format!(
                    "expected a duration like 6h, 1h30m or a number of seconds, got {s:?}"
                ))
            }),
            other => Err(D::Error::custom(format!(
                "expected a duration, got {}",
                super::merge::kind(other)
            ))),
        }
    }
}

/// Log levels upstream accepts (Python names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// Upstream's name of the level.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }

    /// The `tracing` filter directive for this level.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

/// `app.retries` / `defaults.retries` (serialization-failure retries, spec §9.6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Retries {
    #[serde(default = "Retries::d_attempts")]
    pub no_attempts: u32,
    #[serde(default = "Retries::d_min")]
    pub delay_min: f64,
    #[serde(default = "Retries::d_max")]
    pub delay_max: f64,
    #[serde(default = "Retries::d_factor")]
    pub delay_backoff_factor: f64,
    #[serde(default = "Retries::d_fuzz")]
    pub delay_add_fuzz: f64,
}

impl Retries {
    fn d_attempts() -> u32 {
        5
    }
    fn d_min() -> f64 {
        0.1
    }
    fn d_max() -> f64 {
        1.6
    }
    fn d_factor() -> f64 {
        2.0
    }
    fn d_fuzz() -> f64 {
        0.3
    }
}

impl Retries {
    /// Ranges of compat spec §7.2: attempts >= 1, delays >= 0, backoff factor >= 1.
    fn check(&self, raw: &RawConfig, at: &str) -> Result<(), ConfigError> {
        if self.no_attempts < 1 {
            return Err(raw.invalid(
                &format!("{at}.no-attempts"),
                "expected an integer >= 1, got 0",
            ));
        }
        for (k, v, min) in [
            ("delay-min", self.delay_min, 0.0),
            ("delay-max", self.delay_max, 0.0),
            ("delay-backoff-factor", self.delay_backoff_factor, 1.0),
            ("delay-add-fuzz", self.delay_add_fuzz, 0.0),
        ] {
            if !(v.is_finite() && v >= min) {
                return Err(raw.invalid(
                    &format!("{at}.{k}"),
                    format!("expected a number >= {min}, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// A TCP port in the config: 1–65535 (0 is not a port to listen on).
fn check_port(raw: &RawConfig, key: &str, port: u16) -> Result<(), ConfigError> {
    if port == 0 {
        return Err(raw.invalid(key, "expected a port number 1-65535, got 0"));
    }
    Ok(())
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            no_attempts: 5,
            delay_min: 0.1,
            delay_max: 1.6,
            delay_backoff_factor: 2.0,
            delay_add_fuzz: 0.3,
        }
    }
}

/// `client`: what `duffy client` needs to reach the API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub url: Option<String>,
    pub auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    pub name: Option<String>,
    pub key: Option<uuid::Uuid>,
}

/// `app`: the REST API server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(default = "AppConfig::d_host")]
    pub host: String,
    #[serde(default = "AppConfig::d_port")]
    pub port: u16,
    #[serde(default)]
    pub loglevel: LogLevel,
    /// Python logging dictConfig: accepted for compatibility, not applied (duffy logs via tracing).
    #[serde(default)]
    pub logging: Option<Value>,
    #[serde(default)]
    pub retries: Option<Retries>,
    /// duffy's own: may anonymous callers read (`GET /api/v1/pools`, `/nodes`, `/sessions`
    /// and the legacy `/Inventory` without a key)? Default `true`, as upstream (compat spec §12
    /// bug 17); `false` answers them as upstream answers a required-auth endpoint.
    #[serde(default = "AppConfig::d_anonymous_reads", rename = "anonymous-reads")]
    pub anonymous_reads: bool,
    /// duffy's own: a client must send a request's whole header within this time of opening
    /// the connection or of its previous response (hyper's header read timer; slowloris).
    #[serde(default = "AppConfig::d_header_read", rename = "header-read-timeout")]
    pub header_read_timeout: ConfigDuration,
    /// duffy's own: a connection with no request in flight that receives nothing for this
    /// long is closed (idle keep-alives, connections that never send a byte).
    #[serde(default = "AppConfig::d_idle", rename = "idle-timeout")]
    pub idle_timeout: ConfigDuration,
    /// duffy's own: a request's whole body must arrive within this time of its header, else
    /// 408 and the connection is closed.
    #[serde(default = "AppConfig::d_body_read", rename = "body-read-timeout")]
    pub body_read_timeout: ConfigDuration,
    /// duffy's own: open client connections (both listeners together); further clients wait
    /// in the kernel's listen backlog. Default: the open-file limit minus room for the
    /// database connections and the process's own files (`api::Limits::from_config`).
    #[serde(default, rename = "max-connections")]
    pub max_connections: Option<u32>,
    /// duffy's own: on SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[serde(default = "AppConfig::d_shutdown", rename = "shutdown-timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// duffy's own: bounds on the cost of authentication (bcrypt workers, failure back-off).
    #[serde(default)]
    pub auth: AuthLimits,
    /// duffy's own: who may read `GET /metrics` (Prometheus) on the API listener.
    #[serde(default)]
    pub metrics: MetricsAccess,
}

/// `app.metrics`: access to `GET /metrics` of `duffy serve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsAccess {
    /// anyone who reaches the API (what Prometheus exporters usually do; the default)
    #[default]
    Public,
    /// only an admin tenant (HTTP Basic, as the API: Prometheus' `basic_auth`)
    Admin,
    /// not served (404)
    Off,
}

/// `app.auth`: how much CPU wrong API keys may cost the server (see `api::auth`). Per process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthLimits {
    /// bcrypt checks run at once (each ~0.3 s of one core); the rest wait in line. 1..=64.
    #[serde(default = "AuthLimits::d_workers", rename = "bcrypt-workers")]
    pub bcrypt_workers: u32,
    /// Wrong keys one client address may try for one tenant name before back-off (429).
    #[serde(default = "AuthLimits::d_per_tenant", rename = "failures-per-tenant")]
    pub failures_per_tenant: u32,
    /// Wrong keys one client address may try, all names together, before back-off (429).
    #[serde(default = "AuthLimits::d_per_address", rename = "failures-per-address")]
    pub failures_per_address: u32,
    /// The longest back-off, in seconds (it doubles with each further failure up to this).
    #[serde(default = "AuthLimits::d_max_backoff", rename = "max-backoff")]
    pub max_backoff: u64,
}

impl AuthLimits {
    fn d_workers() -> u32 {
        1
    }
    fn d_per_tenant() -> u32 {
        5
    }
    fn d_per_address() -> u32 {
        20
    }
    fn d_max_backoff() -> u64 {
        300
    }

    /// The first out-of-range setting: (key under `app.auth`, what it must be).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=64).contains(&self.bcrypt_workers) {
            return Err(("bcrypt-workers", "must be between 1 and 64"));
        }
        if self.failures_per_tenant < 1 {
            return Err(("failures-per-tenant", "must be at least 1"));
        }
        if self.failures_per_address < 1 {
            return Err(("failures-per-address", "must be at least 1"));
        }
        if !(1..=86_400).contains(&self.max_backoff) {
            return Err(("max-backoff", "must be between 1 and 86400 seconds"));
        }
        Ok(())
    }
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            bcrypt_workers: Self::d_workers(),
            failures_per_tenant: Self::d_per_tenant(),
            failures_per_address: Self::d_per_address(),
            max_backoff: Self::d_max_backoff(),
        }
    }
}

impl AppConfig {
    fn d_host() -> String {
        "127.0.0.1".into()
    }
    fn d_anonymous_reads() -> bool {
        true
    }
    fn d_port() -> u16 {
        8080
    }
    fn d_header_read() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    fn d_idle() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(15))
    }
    fn d_body_read() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }
    fn d_shutdown() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }

    /// The server limits must be positive: a zero timeout or cap would refuse every client.
    fn check(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        for (key, d) in [
            ("app.header-read-timeout", self.header_read_timeout),
            ("app.idle-timeout", self.idle_timeout),
            ("app.body-read-timeout", self.body_read_timeout),
            ("app.shutdown-timeout", self.shutdown_timeout),
        ] {
            if d.0.is_zero() {
                return Err(raw.invalid(key, "expected a duration > 0, got 0"));
            }
        }
        if self.max_connections == Some(0) {
            return Err(raw.invalid("app.max-connections", "expected an integer > 0, got 0"));
        }
        Ok(())
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            host: Self::d_host(),
            port: Self::d_port(),
            loglevel: LogLevel::Info,
            logging: None,
            retries: None,
            anonymous_reads: Self::d_anonymous_reads(),
            auth: AuthLimits::default(),
            metrics: MetricsAccess::default(),
            header_read_timeout: Self::d_header_read(),
            idle_timeout: Self::d_idle(),
            body_read_timeout: Self::d_body_read(),
            max_connections: None,
            shutdown_timeout: Self::d_shutdown(),
        }
    }
}

/// One `metaclient.poolmap` entry (spec §5.2).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolmapEntry {
    pub pool: String,
    pub ver: Option<String>,
    pub arch: Option<String>,
    pub flavor: Option<String>,
}

/// `metaclient`: the legacy cico API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaclientConfig {
    #[serde(default = "AppConfig::d_host")]
    pub host: String,
    #[serde(default = "MetaclientConfig::d_port")]
    pub port: u16,
    #[serde(default)]
    pub loglevel: LogLevel,
    #[serde(default)]
    pub logging: Option<Value>,
    pub dest: Option<String>,
    /// legacy key → tenant name (the keys are secrets)
    #[serde(default)]
    pub usermap: indexmap_like::StringMap,
    #[serde(default)]
    pub poolmap: Vec<PoolmapEntry>,
    pub mangle_hostname: Option<String>,
}

impl MetaclientConfig {
    fn d_port() -> u16 {
        9090
    }
}

/// Ordered string→string map (keeps YAML order).
pub mod indexmap_like {
    use serde::{Deserialize, Deserializer};

    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct StringMap(pub Vec<(String, String)>);

    impl StringMap {
        pub fn get(&self, k: &str) -> Option<&str> {
            self.0.iter().find(|(a, _)| a == k).map(|(_, b)| b.as_str())
        }
    }

    impl<'de> Deserialize<'de> for StringMap {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            use serde::de::Error;
            let m = serde_yaml::Mapping::deserialize(d)?;
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                let k = super::super::merge::key_text(&k);
                match v {
                    serde_yaml::Value::String(s) => out.push((k, s)),
                    other => {
                        return Err(D::Error::custom(format!(
                            "expected a string value, got {}",
                            super::super::merge::kind(&other)
                        )))
                    }
                }
            }
            Ok(StringMap(out))
        }
    }
}

/// `database`: upstream's `sqlalchemy` map (open) with `sync_url`/`async_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default)]
    pub sqlalchemy: Mapping,
}

/// `defaults`: tenant defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Defaults {
    pub session_lifetime: Option<ConfigDuration>,
    pub session_lifetime_max: Option<ConfigDuration>,
    pub node_quota: Option<u32>,
    #[serde(default)]
    pub retries: Option<Retries>,
}

/// `scheduler` (duffy's own): the Rust replacement for upstream's celery worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchedulerConfig {
    /// how often pools are checked even without a NOTIFY
    #[serde(default = "SchedulerConfig::d_fill")]
    pub fill_interval: ConfigDuration,
    /// how often expired sessions are looked for
    #[serde(default = "SchedulerConfig::d_expire")]
    pub expire_interval: ConfigDuration,
    /// how long a claimed job stays leased before another scheduler may take it over
    #[serde(default = "SchedulerConfig::d_lease")]
    pub lease: ConfigDuration,
    /// attempts before a failing job gives up and marks its nodes failed
    #[serde(default = "SchedulerConfig::d_attempts")]
    pub max_attempts: u32,
    /// wall-clock limit of one playbook run
    #[serde(default = "SchedulerConfig::d_timeout")]
    pub playbook_timeout: ConfigDuration,
    /// the ansible-playbook executable
    #[serde(default = "SchedulerConfig::d_ansible")]
    pub ansible_playbook: String,
    /// where each job's playbook output is kept (default `<state-dir>/jobs`)
    pub job_log_dir: Option<PathBuf>,
    /// the scheduler's own files: private run directories (`runs/`), job logs unless
    /// `job-log-dir` is set; see [`SchedulerConfig::state_dir`] for the default
    pub state_dir: Option<PathBuf>,
    /// first delay before a failed job is retried (doubled per attempt, at most 1 h)
    #[serde(default = "SchedulerConfig::d_retry")]
    pub retry_delay: ConfigDuration,
    /// jobs (playbook runs) one scheduler process runs at the same time
    #[serde(default = "SchedulerConfig::d_jobs")]
    pub max_jobs: u32,
    /// `HOST:PORT` where the daemon serves `GET /metrics` (Prometheus, no authentication);
    /// unset: no listener
    pub metrics_listen: Option<String>,
    /// run `duffy reconcile --apply` every so often (the pools with a reconcile playbook);
    /// default: never
    pub reconcile_interval: Option<ConfigDuration>,
    /// the periodic reconcile's grace period for orphaned instances (`--grace`)
    #[serde(default = "SchedulerConfig::d_reconcile_grace")]
    pub reconcile_grace: ConfigDuration,
}

impl SchedulerConfig {
    fn d_fill() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(300))
    }
    fn d_expire() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(60))
    }
    fn d_lease() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(600))
    }
    fn d_attempts() -> u32 {
        5
    }
    fn d_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(3600))
    }
    fn d_ansible() -> String {
        "ansible-playbook".into()
    }
    fn d_retry() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    fn d_jobs() -> u32 {
        8
    }
    fn d_reconcile_grace() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(3600))
    }

    /// `state-dir`, else systemd's `$STATE_DIRECTORY` (`StateDirectory=duffy`), else
    /// `/var/lib/duffy` for root, else `$XDG_STATE_HOME/duffy` (`~/.local/state/duffy`).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(d) = env("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated: the first is ours
            let first = d
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            return PathBuf::from(first);
        }
        // SAFETY: getuid never fails
        if unsafe { libc::getuid() } == 0 {
            return PathBuf::from("/var/lib/duffy");
        }
        env("XDG_STATE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("duffy")
    }

    /// `metrics-listen` split into host and port (`[v6]:port` accepted); `Err`: why not.
    pub fn metrics_addr(&self) -> Option<Result<(String, u16), String>> {
        let a = self.metrics_listen.as_deref()?;
        let parsed = a.rsplit_once(':').and_then(|(h, p)| {
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            let p = p.parse::<u16>().ok().filter(|p| *p > 0)?;
            (!h.is_empty()).then(|| (h.to_string(), p))
        });
        Some(parsed.ok_or_else(|| format!("expected HOST:PORT (port 1-65535), got {a:?}")))
    }

    /// `job-log-dir`, else `<state-dir>/jobs`.
    pub fn job_log_dir(&self) -> PathBuf {
        self.job_log_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("jobs"))
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("scheduler defaults")
    }
}

/// `inventory` (duffy's own): the dynamic inventory's options (`duffy-inventory`, see
/// `inventory/README.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InventoryConfig {
    /// node states to include (default: every state but `done`)
    #[serde(default)]
    pub states: Option<Vec<crate::state::NodeState>>,
    /// also list retired nodes (`retired_at` set); default false
    #[serde(default)]
    pub include_retired: bool,
    /// prepended to every generated group name (`pool_…`, `state_…`, `duffy_all`, …)
    #[serde(default)]
    pub group_prefix: String,
    /// attribute name → how to derive it (group `<attr>_<value>`, hostvar `duffy_<attr>`);
    /// absent: [`InventoryConfig::DEFAULT_ATTRIBUTES`]; `{}`: no attribute groups
    #[serde(default)]
    pub attributes: Option<std::collections::BTreeMap<String, AttributeRule>>,
    /// group that receives `artifacts_projects_list` (used verbatim: it must match the artifacts
    /// host's group in the static inventory, e.g. `hostgroup-role-artifacts-srv`)
    pub artifacts_group: Option<String>,
    /// time limit for connecting to PostgreSQL
    #[serde(default = "InventoryConfig::d_connect_timeout")]
    pub connect_timeout: ConfigDuration,
}

/// How one inventory attribute (e.g. `arch`) is derived for a node. Sources are tried in this
/// order; the first that gives a value wins: `pools` (explicit pool → value), `pool-key` (a key
/// of the pool's merged config, e.g. `architecture`), `data-key` (a top-level key of the node's
/// `data`), `pool-regex` (matched against the pool name: the named group `value`, else group 1,
/// else the whole match).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AttributeRule {
    #[serde(default)]
    pub pools: std::collections::BTreeMap<String, String>,
    pub pool_key: Option<String>,
    pub data_key: Option<String>,
    pub pool_regex: Option<ConfigRegex>,
}

/// A regular expression in a config file, compiled when the config is loaded.
#[derive(Debug, Clone)]
pub struct ConfigRegex(pub regex::Regex);

impl<'de> Deserialize<'de> for ConfigRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        let Value::String(s) = &v else {
            return Err(D::Error::custom(format!(
                "expected a regular expression string, got {}",
                super::merge::kind(&v)
            )));
        };
        regex::Regex::new(s).map(ConfigRegex).map_err(|e| {
            // the regex crate's messages span several lines (pattern, caret, error)
            let text = e.to_string();
            let last = text.lines().last().unwrap_or_default().trim();
            let last = last.strip_prefix("error: ").unwrap_or(last);
            D::Error::custom(format!("invalid regular expression {s:?}: {last}"))
        })
    }
}

impl InventoryConfig {
    /// Attributes used when `inventory.attributes` is absent: upstream's pool naming scheme
    /// `<virt|metal>-<provider>-<flavour>-<os>-<release>-<arch>` (compat spec §8.6), the pool
    /// key / node data key `architecture` (upstream's `reuse-nodes` convention).
    pub const DEFAULT_ATTRIBUTES: &'static str = r#"
arch:
  pool-key: architecture
  data-key: architecture
  pool-regex: '^(?:virt|metal)-[^-]+-[^-]+-[^-]+-[^-]+-(?P<value>[^-]+)$'
release:
  pool-regex: '^(?:virt|metal)-[^-]+-[^-]+-(?P<value>[^-]+-[^-]+)-[^-]+$'
"#;

    /// Attribute names that would shadow one of the inventory's own hostvars (`duffy_<name>`).
    pub const RESERVED_ATTRIBUTES: [&'static str; 12] = [
        "node_id",
        "hostname",
        "pool",
        "state",
        "reusable",
        "comment",
        "session_id",
        "tenant",
        "expires_at",
        "retired_at",
        "data",
        "all",
    ];

    fn d_connect_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }

    /// The node states listed: the configured ones, else every state but `done`.
    pub fn effective_states(&self) -> Vec<crate::state::NodeState> {
        match &self.states {
            Some(s) => s.clone(),
            None => crate::state::NodeState::ALL
                .into_iter()
                .filter(|s| *s != crate::state::NodeState::Done)
                .collect(),
        }
    }

    /// The attribute rules in force: the configured ones, else [`Self::DEFAULT_ATTRIBUTES`].
    pub fn effective_attributes(&self) -> std::collections::BTreeMap<String, AttributeRule> {
        match &self.attributes {
            Some(a) => a.clone(),
            None => serde_yaml::from_str(Self::DEFAULT_ATTRIBUTES).expect("default attributes"),
        }
    }

    /// Checks serde cannot express (names usable in group names, rules with a source).
    fn check(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        if matches!(&self.states, Some(s) if s.is_empty()) {
            return Err(raw.invalid("inventory.states", "expected at least one node state"));
        }
        let valid_name = |s: &str| {
            s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !self.group_prefix.is_empty() && !valid_name(&self.group_prefix) {
            return Err(raw.invalid(
                "inventory.group-prefix",
                format!(
                    "expected letters, digits and `_` only, not starting with a digit (an Ansible group name), got {:?}",
                    self.group_prefix
                ),
            ));
        }
        if let Some(g) = &self.artifacts_group {
            if g.is_empty()
                || g.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == ',')
            {
                return Err(raw.invalid(
                    "inventory.artifacts-group",
                    format!("expected an Ansible group name (no spaces, `:` or `,`), got {g:?}"),
                ));
            }
        }
        for (name, rule) in self.attributes.iter().flatten() {
            let key = format!("inventory.attributes.{name}");
            if name.is_empty() || !valid_name(name) {
                return Err(raw.invalid(
                    &key,
                    "expected an attribute name of letters, digits and `_`, not starting with a digit",
                ));
            }
            if Self::RESERVED_ATTRIBUTES.contains(&name.as_str()) {
                return Err(raw.invalid(
                    &key,
                    format!(
                        "reserved: the inventory already sets duffy_{name} (reserved names: {})",
                        Self::RESERVED_ATTRIBUTES.join(", ")
                    ),
                ));
            }
            if rule.pools.is_empty()
                && rule.pool_key.is_none()
                && rule.data_key.is_none()
                && rule.pool_regex.is_none()
            {
                return Err(raw.invalid(
                    &key,
                    "expected at least one of pools, pool-key, data-key, pool-regex",
                ));
            }
        }
        Ok(())
    }
}

impl Default for InventoryConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("inventory defaults")
    }
}

/// One named BMC credential (`ipmi.credentials.<name>`); nodes reference it by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpmiCredential {
    pub user: String,
    pub password: String,
}

/// `ipmi` (duffy's own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IpmiConfig {
    #[serde(default = "IpmiConfig::d_timeout")]
    pub timeout: ConfigDuration,
    #[serde(default = "IpmiConfig::d_retries")]
    pub retries: u32,
    #[serde(default)]
    pub credentials: std::collections::BTreeMap<String, IpmiCredential>,
}

impl IpmiConfig {
    fn d_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    fn d_retries() -> u32 {
        3
    }
}

impl Default for IpmiConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("ipmi defaults")
    }
}

/// `events` (duffy's own): PostgreSQL LISTEN/NOTIFY channel used between API and scheduler,
/// and the optional beanstalkd event bus (`crate::bus`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default = "EventsConfig::d_channel")]
    pub channel: String,
    /// publish every node and session transition to beanstalkd (absent: no bus)
    #[serde(default)]
    pub beanstalkd: Option<BeanstalkdConfig>,
}

impl EventsConfig {
    fn d_channel() -> String {
        "duffy_events".into()
    }

    fn check(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        match &self.beanstalkd {
            Some(b) => b
                .check()
                .map_err(|(key, msg)| raw.invalid(&format!("events.beanstalkd.{key}"), msg)),
            None => Ok(()),
        }
    }
}

/// `events.beanstalkd`: where and how events are published (`crate::bus`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BeanstalkdConfig {
    /// `host:port` of beanstalkd (port default 11300)
    pub address: String,
    /// the tube events are put into
    #[serde(default = "BeanstalkdConfig::d_tube")]
    pub tube: String,
    /// job priority (0 is the most urgent)
    #[serde(default = "BeanstalkdConfig::d_priority")]
    pub priority: u32,
    /// seconds a consumer may hold a reserved job (beanstalkd's TTR)
    #[serde(default = "BeanstalkdConfig::d_ttr")]
    pub ttr: u32,
    /// the largest job put, in bytes: beanstalkd's `-z` (default 65535); a longer `reason`
    /// is shortened to fit
    #[serde(default = "BeanstalkdConfig::d_max_job_size", rename = "max-job-size")]
    pub max_job_size: usize,
    /// how often the outbox is looked at without a NOTIFY
    #[serde(default = "BeanstalkdConfig::d_poll", rename = "poll-interval")]
    pub poll_interval: ConfigDuration,
    /// time limit of a connection attempt and of each answer of beanstalkd
    #[serde(default = "BeanstalkdConfig::d_timeout")]
    pub timeout: ConfigDuration,
}

impl BeanstalkdConfig {
    fn d_tube() -> String {
        "duffy".into()
    }
    fn d_priority() -> u32 {
        1024
    }
    fn d_ttr() -> u32 {
        60
    }
    fn d_max_job_size() -> usize {
        65535
    }
    fn d_poll() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(5))
    }
    fn d_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(10))
    }

    /// `host:port` with the default port added when missing.
    pub fn host_port(&self) -> String {
        let a = self.address.trim();
        let has_port = match a.rsplit_once(':') {
            // `[::1]:11300`, `host:11300`; a bare IPv6 address has several colons
            Some((h, p)) => !p.is_empty() && (!h.contains(':') || h.ends_with(']')),
            None => false,
        };
        if has_port {
            a.to_string()
        } else if a.contains(':') && !a.starts_with('[') {
            format!("[{a}]:11300")
        } else {
            format!("{a}:11300")
        }
    }

    /// The first invalid setting: (key under `events.beanstalkd`, what it must be).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let hp = self.host_port();
        let (host, port) = hp.rsplit_once(':').expect("host_port has a port");
        if host.is_empty() || host == "[]" || self.address.trim().is_empty() {
            return Err(("address", "must be host:port of beanstalkd".into()));
        }
        if host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err((
                "address",
                format!("must be host:port of beanstalkd, got {:?}", self.address),
            ));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err((
                    "address",
                    format!("port must be 1..65535, got {port:?} in {:?}", self.address),
                ))
            }
        }
        crate::bus::beanstalkd::check_tube(&self.tube).map_err(|m| ("tube", m))?;
        if self.ttr == 0 {
            return Err(("ttr", "must be at least 1 second".into()));
        }
        if !(1024..=(1 << 30)).contains(&self.max_job_size) {
            return Err((
                "max-job-size",
                "must be between 1024 and 1073741824 bytes".into(),
            ));
        }
        if self.poll_interval.0 < Duration::from_millis(100) {
            return Err(("poll-interval", "must be at least 0.1 seconds".into()));
        }
        if self.timeout.0 < Duration::from_millis(100) {
            return Err(("timeout", "must be at least 0.1 seconds".into()));
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("events defaults")
    }
}

/// The validated, merged configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub client: Option<ClientConfig>,
    pub app: AppConfig,
    pub metaclient: Option<MetaclientConfig>,
    pub database: DatabaseConfig,
    pub defaults: Defaults,
    /// upstream's celery section was present (accepted, unused)
    pub has_tasks: bool,
    pub nodepools: Vec<pools::Pool>,
    pub scheduler: SchedulerConfig,
    pub inventory: InventoryConfig,
    pub ipmi: IpmiConfig,
    pub events: EventsConfig,
    pub contextualize: ContextualizeConfig,
    pub legacy_import: LegacyImportConfig,
    /// `$DUFFY_DATABASE_URL` at load time
    pub database_url_override: Option<String>,
    pub raw: RawConfig,
}

fn section<T: DeserializeOwned>(raw: &RawConfig, key: &str) -> Result<Option<T>, ConfigError> {
    let Some(v) = raw.value.get(key) else {
        return Ok(None);
    };
    if v.is_null() {
        return Ok(None);
    }
    match serde_path_to_error::deserialize::<_, T>(v.clone()) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                key.to_string()
            } else {
                format!("{key}.{inner}")
            };
            let mut msg = e.into_inner().to_string();
            // serde quotes the offending value (`invalid type: integer `1234``): not for secrets
            if secrets::is_secret_path(&path) {
                msg = secrets::redact_quoted(&msg);
            }
            Err(raw.invalid(&path, msg))
        }
    }
}

impl Config {
    /// Validate a merged raw config into the typed model.
    pub fn from_raw(mut raw: RawConfig) -> Result<Config, ConfigError> {
        super::lax::coerce_upstream(&mut raw.value);
        for k in raw.value.keys() {
            let name = super::merge::key_text(k);
            if !UPSTREAM_SECTIONS.contains(&name.as_str())
                && !DUFFY_SECTIONS.contains(&name.as_str())
            {
                return Err(raw.invalid(
                    &name,
                    format!(
                        "unknown top-level key, expected one of {}",
                        UPSTREAM_SECTIONS
                            .iter()
                            .chain(DUFFY_SECTIONS.iter())
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let defaults: Defaults = section(&raw, "defaults")?.unwrap_or_default();
        if defaults.node_quota == Some(0) {
            return Err(raw.invalid("defaults.node-quota", "expected an integer > 0, got 0"));
        }
        if let Some(r) = &defaults.retries {
            r.check(&raw, "defaults.retries")?;
        }
        let app: AppConfig = section(&raw, "app")?.unwrap_or_default();
        check_port(&raw, "app.port", app.port)?;
        app.check(&raw)?;
        if let Some(r) = &app.retries {
            r.check(&raw, "app.retries")?;
        }
        let metaclient: Option<MetaclientConfig> = section(&raw, "metaclient")?;
        if let Some(m) = &metaclient {
            check_port(&raw, "metaclient.port", m.port)?;
            if let Some(dest) = &m.dest {
                if !(dest.starts_with("http://") || dest.starts_with("https://")) {
                    return Err(raw.invalid(
                        "metaclient.dest",
                        format!("expected an http(s) URL, got {dest:?}"),
                    ));
                }
            }
        }
        let client: Option<ClientConfig> = section(&raw, "client")?;
        if let Some(url) = client.as_ref().and_then(|c| c.url.as_ref()) {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(raw.invalid(
                    "client.url",
                    format!("expected an http(s) URL, got {url:?}"),
                ));
            }
        }
        let database: DatabaseConfig = section(&raw, "database")?.unwrap_or_default();
        for k in ["sync_url", "async_url"] {
            match database.sqlalchemy.get(k) {
                None => {}
                Some(Value::String(s)) if s.trim().is_empty() => {
                    return Err(raw.invalid(
                        &format!("database.sqlalchemy.{k}"),
                        "expected a database URL (postgresql://user:password@host:port/db), got an empty string",
                    ))
                }
                Some(Value::String(_)) => {}
                Some(other) => {
                    return Err(raw.invalid(
                        &format!("database.sqlalchemy.{k}"),
                        format!(
                            "expected a database URL string, got {}",
                            super::merge::kind(other)
                        ),
                    ))
                }
            }
        }
        let has_tasks = raw.value.contains_key("tasks");
        if let Some(t) = raw.value.get("tasks") {
            if !(t.is_mapping() || t.is_null()) {
                return Err(raw.invalid(
                    "tasks",
                    format!("expected a mapping, got {}", super::merge::kind(t)),
                ));
            }
        }
        let nodepools = pools::resolve(&raw)?;
        let cfg = Config {
            client,
            app,
            metaclient,
            database,
            defaults,
            has_tasks,
            nodepools,
            scheduler: section(&raw, "scheduler")?.unwrap_or_default(),
            inventory: section::<InventoryConfig>(&raw, "inventory")?.unwrap_or_default(),
            ipmi: section(&raw, "ipmi")?.unwrap_or_default(),
            events: section(&raw, "events")?.unwrap_or_default(),
            contextualize: section(&raw, "contextualize")?.unwrap_or_default(),
            legacy_import: section(&raw, "legacy-import")?.unwrap_or_default(),
            database_url_override: std::env::var(ENV_DATABASE_URL)
                .ok()
                .filter(|s| !s.is_empty()),
            raw,
        };
        cfg.inventory.check(&cfg.raw)?;
        cfg.legacy_import.check(&cfg)?;
        cfg.events.check(&cfg.raw)?;
        if let Some(Err(msg)) = cfg.scheduler.metrics_addr() {
            return Err(cfg.raw.invalid("scheduler.metrics-listen", msg));
        }
        if let Err((key, msg)) = cfg.app.auth.check() {
            return Err(cfg.raw.invalid(&format!("app.auth.{key}"), msg));
        }
        // The file's URL is checked even when overridden: `config check` vouches for the files.
        // Another dialect (upstream's example config has `sqlite://`) is upstream's to accept:
        // it loads, the CLI warns, and `database_url` refuses it to whatever needs a database.
        if let Some((key, url)) = cfg.configured_database_url() {
            match crate::db::url::parse(&url) {
                Ok(_) | Err(crate::db::url::UrlError::Scheme(_)) => {}
                Err(e) => return Err(cfg.raw.invalid(&key, e.to_string())),
            }
        }
        if let Some(url) = &cfg.database_url_override {
            crate::db::url::parse(url).map_err(|e| ConfigError::Invalid {
                file: format!("${ENV_DATABASE_URL}"),
                key: "database URL".into(),
                msg: e.to_string(),
            })?;
        }
        Ok(cfg)
    }

    /// `(key path, url)` of the configured database URL, `+driver` still in it.
    fn configured_database_url(&self) -> Option<(String, String)> {
        for k in ["sync_url", "async_url"] {
            if let Some(Value::String(s)) = self.database.sqlalchemy.get(k) {
                return Some((format!("database.sqlalchemy.{k}"), s.clone()));
            }
        }
        None
    }

    /// The configured database URL when it is not PostgreSQL's (upstream also runs on SQLite
    /// and others): `(key path, message)`, for the CLI's warning. `None` when
    /// `$DUFFY_DATABASE_URL` replaces it.
    pub fn unsupported_database(&self) -> Option<(String, String)> {
        if self.database_url_override.is_some() {
            return None;
        }
        let (key, url) = self.configured_database_url()?;
        match crate::db::url::parse(&url) {
            Err(e @ crate::db::url::UrlError::Scheme(_)) => Some((key, e.to_string())),
            _ => None,
        }
    }

    /// The PostgreSQL URL to use: `$DUFFY_DATABASE_URL`, else `sync_url`, else `async_url`,
    /// with SQLAlchemy's `+driver` removed.
    pub fn database_url(&self) -> Result<String, ConfigError> {
        if let Some((key, msg)) = self.unsupported_database() {
            return Err(self.raw.invalid(
                &key,
                format!("{msg}: duffy needs PostgreSQL (set a postgresql:// URL here or in ${ENV_DATABASE_URL})"),
            ));
        }
        let url = match (&self.database_url_override, self.configured_database_url()) {
            (Some(u), _) => u.clone(),
            (None, Some((_, u))) => u,
            (None, None) => {
                return Err(ConfigError::Invalid {
                    file: self.raw.file_of("database"),
                    key: "database.sqlalchemy.sync_url".into(),
                    msg: format!(
                        "not set: duffy needs a PostgreSQL URL here or in ${ENV_DATABASE_URL}"
                    ),
                })
            }
        };
        Ok(crate::db::url::strip_driver(&url))
    }

    /// Concrete pools, in config order.
    pub fn concrete_pools(&self) -> impl Iterator<Item = &pools::Pool> {
        self.nodepools
            .iter()
            .filter(|p| p.kind == pools::PoolKind::Concrete)
    }

    /// Any pool (abstract or concrete) by name.
    pub fn pool(&self, name: &str) -> Option<&pools::Pool> {
        self.nodepools.iter().find(|p| p.name == name)
    }

    /// The top-level keys present, in merge order (for `config check`).
    pub fn sections(&self) -> Vec<String> {
        self.raw.value.keys().map(super::merge::key_text).collect()
    }
}

/// `contextualize` (duffy's own): how the API installs tenants' SSH keys on nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContextualizeConfig {
    /// per-node time limit (connect + command)
    #[serde(default = "ContextualizeConfig::d_timeout")]
    pub timeout: ConfigDuration,
    /// the ssh client to run
    #[serde(default = "ContextualizeConfig::d_ssh")]
    pub ssh: String,
    /// private key to use (default: the ssh client's defaults for the server's user)
    pub identity: Option<PathBuf>,
    /// extra ssh arguments, e.g. ["-p", "2222"]
    #[serde(default)]
    pub ssh_options: Vec<String>,
}

impl ContextualizeConfig {
    fn d_timeout() -> ConfigDuration {
        ConfigDuration(Duration::from_secs(30))
    }
    fn d_ssh() -> String {
        "ssh".into()
    }
}

impl Default for ContextualizeConfig {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("contextualize defaults")
    }
}

/// `legacy-import` (duffy's own): how `duffy import-legacy` maps a Duffy v2 `stock` row onto a
/// pool. Rules are tried in order; the first whose every given criterion matches wins. A
/// criterion is one value or a list of values (any of them); `""` matches an empty or NULL
/// column. A row that matches no rule is reported and not imported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LegacyImportConfig {
    #[serde(default)]
    pub pools: Vec<LegacyPoolRule>,
}

/// One rule of `legacy-import.pools`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LegacyPoolRule {
    /// the concrete pool (of `nodepools`) the matching nodes go to
    pub pool: String,
    /// `stock.arch`, e.g. `x86_64`
    pub arch: Option<ConfigValues>,
    /// `stock.rel`
    pub rel: Option<ConfigValues>,
    /// `stock.ver`, e.g. `7`, `8-stream`
    pub ver: Option<ConfigValues>,
    /// `stock.flavor`, e.g. `tiny` (`""`: none)
    pub flavor: Option<ConfigValues>,
    /// v2's pool number (`stock.pool`)
    pub v2_pool: Option<ConfigValues>,
    /// whether the nodes are reused after a session (duffy's `nodes.reusable`); v2's stock is
    /// physical machines reinstalled between sessions, so true unless told otherwise
    #[serde(default = "LegacyPoolRule::d_reusable")]
    pub reusable: bool,
}

impl LegacyPoolRule {
    fn d_reusable() -> bool {
        true
    }
}

/// One scalar or a list of scalars (strings or numbers), compared as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigValues(pub Vec<String>);

impl ConfigValues {
    /// Does `v` (NULL = `None`) match one of the values? `""` matches NULL.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let v = v.map(str::trim).unwrap_or("");
        self.0.iter().any(|x| x == v)
    }
}

impl<'de> Deserialize<'de> for ConfigValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        fn scalar(v: &Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }
        let v = Value::deserialize(d)?;
        let expected = |got: &Value| {
            D::Error::custom(format!(
                "expected a string or number, or a list of them, got {}",
                super::merge::kind(got)
            ))
        };
        match &v {
            Value::Sequence(items) if !items.is_empty() => items
                .iter()
                .map(|i| scalar(i).ok_or_else(|| expected(i)))
                .collect::<Result<Vec<_>, _>>()
                .map(ConfigValues),
            Value::Sequence(_) => Err(D::Error::custom("expected at least one value, got []")),
            other => scalar(other)
                .map(|s| ConfigValues(vec![s]))
                .ok_or_else(|| expected(other)),
        }
    }
}

impl LegacyImportConfig {
    /// Every rule names a concrete pool of `nodepools`.
    fn check(&self, cfg: &Config) -> Result<(), ConfigError> {
        for (i, r) in self.pools.iter().enumerate() {
            if cfg.concrete_pools().all(|p| p.name != r.pool) {
                let known: Vec<&str> = cfg.concrete_pools().map(|p| p.name.as_str()).collect();
                return Err(cfg.raw.invalid(
                    &format!("legacy-import.pools[{i}].pool"),
                    format!(
                        "{:?} is not a concrete pool of nodepools (known: {})",
                        r.pool,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The first rule matching a v2 `stock` row's attributes.
    pub fn rule_for(
        &self,
        arch: Option<&str>,
        rel: Option<&str>,
        ver: Option<&str>,
        flavor: Option<&str>,
        v2_pool: Option<i64>,
    ) -> Option<&LegacyPoolRule> {
        let pool = v2_pool.map(|p| p.to_string());
        self.pools.iter().find(|r| {
            let ok =
                |c: &Option<ConfigValues>, v: Option<&str>| c.as_ref().is_none_or(|c| c.matches(v));
            ok(&r.arch, arch)
                && ok(&r.rel, rel)
                && ok(&r.ver, ver)
                && ok(&r.flavor, flavor)
                && ok(&r.v2_pool, pool.as_deref())
        })
    }
}
