//! The runtime of duffy's Ansible modules: Rust binaries that Ansible runs as *binary modules*
//! (`<module> <args.json>`, one JSON object on stdout; `../shared/spec/ansible-binary-modules.md`).
//!
//! Ansible does nothing for a binary module that `AnsibleModule` does for a Python one, so this
//! runtime does it: it reads the arguments file, validates it against the module's declared
//! [`Spec`] (unknown options, types with Ansible's coercions, required, choices, defaults,
//! mutually exclusive, …; [`spec`]), honours `_ansible_check_mode` / `_ansible_diff`, and prints
//! exactly one JSON object `{changed, failed, msg, diff, …, invocation}`. Every error — a panic
//! included — becomes `failed: true` with a one-line `msg`, never other output. Ansible cannot
//! apply `no_log` to a binary module's options, so the runtime masks every secret (no_log
//! options, passwords of database URLs, secrets of the loaded config, anything a module
//! registers with [`Run::secret`]) wherever it would appear in the output.
//!
//! The modules themselves ([`tenant`], [`node`], [`session`], [`ipmi_power`]) are library code
//! calling the same domain functions as the CLI and the API (`tenant`, `db::nodes` +
//! `state`, `alloc`, `client`, `ipmi`); `src/bin/<module>.rs` only calls [`main`]. This module knows
//! nothing about SQL.

pub mod ipmi_power;
pub mod node;
pub mod session;
pub mod spec;
pub mod tenant;

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Map, Value};

use crate::config::{self, Config};
use crate::db::Db;
pub use spec::{Dflt, Opt, Params, Secret, Spec, Type};

pub use crate::secrets::ANSIBLE_MASK as MASK;
/// What a no_log option looks like in `invocation.module_args` (as AnsibleModule shows it).
pub const NO_LOG_VALUE: &str = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER";

/// A module: its name, its options and what it does.
pub struct Module {
    pub name: &'static str,
    pub spec: Spec,
    pub run: fn(&mut Run) -> anyhow::Result<Outcome>,
}

/// One run of a module: validated options, Ansible's flags, collected secrets and warnings.
pub struct Run {
    pub params: Params,
    /// `_ansible_check_mode`: compute what would change, change nothing
    pub check_mode: bool,
    /// `_ansible_diff`: return `diff` when something changes
    pub diff: bool,
    pub module: &'static str,
    secrets: Rc<RefCell<Vec<String>>>,
    warnings: Vec<String>,
}

impl Run {
    /// Register a secret discovered at run time (e.g. the password of the config's DB URL):
    /// it is masked in the output.
    pub fn secret(&self, s: impl Into<String>) {
        let s = s.into();
        if !s.is_empty() {
            self.secrets.borrow_mut().push(s);
        }
    }

    /// A warning shown by Ansible (`[WARNING]: …`).
    pub fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }
}

/// `diff: {before, after}` of one object (dicts; Ansible's callbacks render them).
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    pub before: Value,
    pub after: Value,
    /// e.g. `tenant demo` (shown as `before: tenant demo` / `after: tenant demo`)
    pub header: String,
}

/// A module's successful result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub changed: bool,
    pub msg: String,
    pub diff: Option<Diff>,
    /// further result keys (`tenant`, `node`, `session_id`, …)
    pub data: Map<String, Value>,
}

impl Outcome {
    pub fn new(changed: bool, msg: impl Into<String>) -> Outcome {
        Outcome {
            changed,
            msg: msg.into(),
            ..Default::default()
        }
    }

    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Outcome {
        self.data.insert(key.to_string(), v.into());
        self
    }

    pub fn diff(mut self, header: impl Into<String>, before: Value, after: Value) -> Outcome {
        self.diff = Some(Diff {
            before,
            after,
            header: header.into(),
        });
        self
    }
}

/// A failure carrying result keys besides `msg` (e.g. the current state of the object).
#[derive(Debug)]
pub struct Failure {
    pub msg: String,
    pub data: Map<String, Value>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Failure {
        Failure {
            msg: msg.into(),
            data: Map::new(),
        }
    }
    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Failure {
        self.data.insert(key.to_string(), v.into());
        self
    }
}

/// Where the last panic happened (the binaries' hook records it instead of printing to stderr).
static LAST_PANIC_AT: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if let (Some(l), Ok(mut g)) = (info.location(), LAST_PANIC_AT.lock()) {
            *g = Some(format!("{}:{}", l.file(), l.line()));
        }
    }));
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    match LAST_PANIC_AT.lock().ok().and_then(|mut g| g.take()) {
        Some(at) => format!("{what} at {at}"),
        None => what,
    }
}

/// The entry point of every module binary: run, print the one JSON result, exit 0 or 1.
pub fn main(m: &Module) -> ! {
    install_panic_hook();
    let (out, code) = execute(m, std::env::args_os().nth(1));
    let mut text = serde_json::to_string(&out).unwrap_or_else(|_| {
        r#"{"failed": true, "msg": "cannot serialise the module result"}"#.to_string()
    });
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    std::process::exit(code)
}

/// Run `m` on the arguments file at `args_path`; the result object and the exit code.
/// Never panics (panics of the module become `failed: true`).
pub fn execute(m: &Module, args_path: Option<OsString>) -> (Value, i32) {
    let secrets: Rc<RefCell<Vec<String>>> = Rc::default();
    let mut invocation: Option<Value> = None;
    let mut inject = true;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_module(m, args_path, &secrets, &mut invocation, &mut inject)
    }));
    let mut out = match result {
        Ok(Ok(v)) => v,
        Ok(Err(f)) => failed(f),
        Err(payload) => failed(Failure::new(format!(
            "internal error in module {}: {} (please report this bug)",
            m.name,
            panic_message(&*payload)
        ))),
    };
    let failed_now = out.get("failed") == Some(&Value::Bool(true));
    if let (Some(inv), true) = (invocation, inject) {
        out.insert("invocation".into(), inv);
    }
    let mut secrets = secrets.borrow().clone();
    // longest first, so that a secret containing another is masked whole
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let masked = mask(&Value::Object(out), &secrets);
    (masked, if failed_now { 1 } else { 0 })
}

fn failed(f: Failure) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("changed".into(), Value::Bool(false));
    out.insert("failed".into(), Value::Bool(true));
    out.insert("msg".into(), Value::String(one_line(&f.msg)));
    for (k, v) in f.data {
        out.entry(k).or_insert(v);
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run_module(
    m: &Module,
    args_path: Option<OsString>,
    secrets: &Rc<RefCell<Vec<String>>>,
    invocation: &mut Option<Value>,
    inject: &mut bool,
) -> Result<Map<String, Value>, Failure> {
    let path = args_path.ok_or_else(|| {
        Failure::new(format!(
            "{} is an Ansible module: run it with the path of a JSON arguments file as its only argument",
            m.name
        ))
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::new(format!(
            "cannot read the arguments file {}: {e}",
            PathBuf::from(&path).display()
        ))
    })?;
    let all: Map<String, Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(Failure::new("the arguments file must hold a JSON object")),
        Err(e) => {
            return Err(Failure::new(format!(
                "the arguments file is not valid JSON: {e}"
            )))
        }
    };
    let flag = |k: &str| all.get(k).and_then(Value::as_bool);
    let check_mode = flag("_ansible_check_mode").unwrap_or(false);
    let diff = flag("_ansible_diff").unwrap_or(false);
    // 2.21+ sends `_ansible_inject_invocation` (false by default); older versions expect it
    *inject =
        flag("_ansible_inject_invocation").unwrap_or(true) && flag("_ansible_no_log") != Some(true);
    let user: Map<String, Value> = all
        .iter()
        .filter(|(k, _)| !k.starts_with("_ansible_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // secrets first: validation messages must not leak them either
    {
        let mut s = secrets.borrow_mut();
        spec::secrets_of(m.spec.options, &user, &mut s);
        for (k, v) in &user {
            let known = m
                .spec
                .options
                .iter()
                .any(|o| o.name == k || o.aliases.contains(&k.as_str()));
            if !known && crate::secrets::is_secret_key(k) {
                crate::secrets::scalars(v, &mut s);
            }
        }
        s.retain(|x| !x.is_empty());
    }
    *invocation = Some(json!({ "module_args": invocation_args(m.spec.options, &user) }));
    let params = spec::validate(&m.spec, &user, m.name).map_err(Failure::new)?;
    *invocation = Some(json!({ "module_args": invocation_args(m.spec.options, params.values()) }));
    let mut run = Run {
        params,
        check_mode,
        diff,
        module: m.name,
        secrets: secrets.clone(),
        warnings: Vec::new(),
    };
    let outcome = (m.run)(&mut run);
    let warnings = std::mem::take(&mut run.warnings);
    let mut out = match outcome {
        Ok(o) => {
            let mut out = Map::new();
            out.insert("changed".into(), Value::Bool(o.changed));
            out.insert("failed".into(), Value::Bool(false));
            out.insert("msg".into(), Value::String(o.msg));
            if let (true, true, Some(d)) = (diff, o.changed, o.diff) {
                out.insert(
                    "diff".into(),
                    json!({"before": d.before, "after": d.after,
                           "before_header": d.header, "after_header": d.header}),
                );
            }
            for (k, v) in o.data {
                out.entry(k).or_insert(v);
            }
            out
        }
        Err(e) => match e.downcast::<Failure>() {
            Ok(f) => failed(f),
            Err(e) => failed(Failure::new(format!("{e:#}"))),
        },
    };
    if !warnings.is_empty() {
        out.insert("warnings".into(), json!(warnings));
    }
    Ok(out)
}

/// `invocation.module_args`: the options with no_log values replaced (as AnsibleModule does)
/// and the passwords of URLs masked; unknown options (a misspelt `api_kye`?) are left out.
fn invocation_args(options: &[Opt], args: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in args {
        let opt = options
            .iter()
            .find(|o| o.name == k || o.aliases.contains(&k.as_str()));
        let shown = match opt {
            _ if v.is_null() => Value::Null,
            Some(o) if o.secret == Secret::Whole => Value::from(NO_LOG_VALUE),
            Some(o) if o.secret == Secret::UrlPassword => match v {
                Value::String(s) => Value::from(config::mask_url(s)),
                _ => Value::from(NO_LOG_VALUE),
            },
            Some(o) if !o.suboptions.is_empty() => match v {
                Value::Object(m) => invocation_args(o.suboptions, m),
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .map(|i| match i {
                            Value::Object(m) => invocation_args(o.suboptions, m),
                            other => other.clone(),
                        })
                        .collect(),
                ),
                other => other.clone(),
            },
            // an unknown option (maybe a misspelt secret): not echoed
            None => continue,
            _ => v.clone(),
        };
        out.insert(k.clone(), shown);
    }
    Value::Object(out)
}

/// `x` with every occurrence of a secret [`MASK`]ed and URL passwords masked (module output,
/// the scheduler's job logs).
pub fn mask_text(x: &str, secrets: &[String]) -> String {
    let mut t = x.to_string();
    for sec in secrets {
        if !sec.is_empty() && t.contains(sec.as_str()) {
            t = t.replace(sec.as_str(), MASK);
        }
    }
    config::mask_url(&t)
}

/// A copy of `v` where every occurrence of a secret (in strings and in keys) is [`MASK`]ed and
/// URL passwords are masked.
pub fn mask(v: &Value, secrets: &[String]) -> Value {
    let s = |x: &str| mask_text(x, secrets);
    match v {
        Value::String(x) => Value::String(s(x)),
        Value::Number(n) if secrets.iter().any(|x| *x == n.to_string()) => Value::from(MASK),
        Value::Array(a) => Value::Array(a.iter().map(|x| mask(x, secrets)).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, x)| (s(k), mask(x, secrets))).collect())
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// What the three duffy modules share: `config`, `database_url`, the connection.
// ---------------------------------------------------------------------------------------------

/// `config`: a duffy config file or directory (else `$DUFFY_CONFIG`, else `/etc/duffy` +
/// `~/.config/duffy`, like every duffy program).
pub const OPT_CONFIG: Opt = Opt::new("config", Type::Path);
/// `database_url`: overrides the config's (and `$DUFFY_DATABASE_URL`); its password is masked.
pub const OPT_DATABASE_URL: Opt = Opt::str("database_url").url_password();

/// How long connecting to PostgreSQL may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The audit actor of a module's changes.
pub fn actor(run: &Run) -> String {
    format!("ansible:{}", run.module)
}

/// Load the configuration the way every duffy program does (`config` option = `-c`), and
/// register its secrets for masking.
pub fn load_config(run: &Run) -> anyhow::Result<Config> {
    let explicit: Vec<PathBuf> = run.params.path("config").into_iter().collect();
    let cfg = config::load(&explicit).map_err(|e| anyhow!("configuration: {e}"))?;
    for k in ["sync_url", "async_url"] {
        if let Some(serde_yaml::Value::String(u)) = cfg.database.sqlalchemy.get(k) {
            spec::url_passwords(u)
                .into_iter()
                .for_each(|p| run.secret(p));
        }
    }
    if let Some(u) = &cfg.database_url_override {
        spec::url_passwords(u)
            .into_iter()
            .for_each(|p| run.secret(p));
    }
    for c in cfg.ipmi.credentials.values() {
        run.secret(c.password.clone());
    }
    if let Some(k) = cfg
        .client
        .as_ref()
        .and_then(|c| c.auth.as_ref())
        .and_then(|a| a.key)
    {
        run.secret(k.to_string());
    }
    if let Some(m) = &cfg.metaclient {
        for (k, _) in &m.usermap.0 {
            run.secret(k.clone());
        }
    }
    Ok(cfg)
}

/// The database URL: the `database_url` option, else the config's (or `$DUFFY_DATABASE_URL`).
pub fn database_url(run: &Run, cfg: &Config) -> anyhow::Result<String> {
    let url = match run.params.str("database_url") {
        Some(u) => crate::db::url::strip_driver(u),
        None => cfg.database_url().map_err(|e| {
            anyhow!("no database: set the database_url option or configure one ({e})")
        })?,
    };
    spec::url_passwords(&url)
        .into_iter()
        .for_each(|p| run.secret(p));
    Ok(url)
}

/// Connect to the duffy database (a small pool: modules are short-lived), refusing one that
/// `duffy migrate` has not created or brought up to date.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    match tokio::time::timeout(CONNECT_TIMEOUT, Db::connect_migrated(url, 2)).await {
        Ok(r) => r.context("database"),
        Err(_) => Err(anyhow!(
            "database: no connection to PostgreSQL within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Config + database, for the DB-backed modules.
pub struct Duffy {
    pub cfg: Config,
    pub db: Db,
}

impl Duffy {
    pub async fn open(run: &Run) -> anyhow::Result<Duffy> {
        let cfg = load_config(run)?;
        let url = database_url(run, &cfg)?;
        let db = connect(&url).await?;
        Ok(Duffy { cfg, db })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(run: &mut Run) -> anyhow::Result<Outcome> {
        match run.params.str("mode") {
            Some("panic") => panic!("boom with {}", run.params.str("token").unwrap_or("")),
            Some("fail") => Err(anyhow!(
                "failed using {} and {}",
                run.params.str("token").unwrap_or(""),
                run.params.str("url").unwrap_or("")
            )),
            _ => Ok(Outcome::new(true, "ok")
                .with("echo", run.params.str("token").unwrap_or(""))
                .diff("x", json!({"a": 1}), json!({"a": 2}))),
        }
    }

    const M: Module = Module {
        name: "echo",
        spec: Spec::new(&[
            Opt::str("mode"),
            Opt::str("token").no_log(),
            Opt::str("url").url_password(),
        ]),
        run: echo,
    };

    fn exec(args: Value) -> (Value, i32) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("args");
        std::fs::write(&p, args.to_string()).unwrap();
        execute(&M, Some(p.into_os_string()))
    }

    #[test]
    fn masks_secrets_everywhere() {
        let (out, code) = exec(
            json!({"token": "s3cr3t-tok", "url": "postgresql://u:pw-xyz@h/d",
                                      "_ansible_diff": true, "_ansible_module_name": "echo"}),
        );
        assert_eq!(code, 0);
        let text = out.to_string();
        assert!(
            !text.contains("s3cr3t-tok") && !text.contains("pw-xyz"),
            "{text}"
        );
        assert_eq!(out["echo"], json!(MASK));
        assert_eq!(
            out["invocation"]["module_args"]["token"],
            json!(NO_LOG_VALUE)
        );
        assert_eq!(out["diff"]["after"], json!({"a": 2}));
        let (out, code) =
            exec(json!({"mode": "fail", "token": "s3cr3t-tok", "url": "x://u:pw-xyz@h"}));
        assert_eq!(code, 1);
        assert_eq!(out["failed"], json!(true));
        assert!(!out.to_string().contains("s3cr3t") && !out.to_string().contains("pw-xyz"));
    }

    #[test]
    fn panics_and_bad_input_become_failures() {
        let (out, code) = exec(json!({"mode": "panic", "token": "s3cr3t-tok"}));
        assert_eq!(code, 1);
        let msg = out["msg"].as_str().unwrap();
        assert!(
            msg.starts_with("internal error in module echo: boom with ********"),
            "{msg}"
        );
        let (out, _) = exec(json!({"bogus": 1, "password": "hunter22"}));
        let msg = out["msg"].as_str().unwrap();
        assert!(
            msg.contains("Unsupported parameters for (echo) module: bogus, password"),
            "{msg}"
        );
        assert!(!out.to_string().contains("hunter22"));
        let (out, code) = execute(&M, None);
        assert_eq!(code, 1);
        assert!(out["msg"].as_str().unwrap().contains("arguments file"));
        let (out, _) = exec(json!({"_ansible_inject_invocation": false}));
        assert!(out.get("invocation").is_none());
        assert!(out.get("diff").is_none(), "no diff unless _ansible_diff");
    }
}
