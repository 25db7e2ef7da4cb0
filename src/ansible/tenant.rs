//! `duffy_tenant`: create, update, retire and unretire tenants — the domain operations of
//! [`crate::tenant`] (the ones `duffy admin` and the REST API use), made idempotent.
//!
//! The desired settings are compared with the tenant's row first; nothing is written when they
//! match (`changed: false`), nor in check mode. A new API key is returned once, in `api_key`,
//! only when the tenant is created or `reset_api_key: true` (then `api_key_created: true` and a
//! warning to register the result with `no_log`); an `api_key` given as option is compared with
//! the stored bcrypt hash and never echoed.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{actor, Dflt, Duffy, Failure, Module, Opt, Outcome, Run, Spec};
use crate::tenant::{self, ApiKeyChange, NewTenant, Tenant, TenantChanges, TenantError};
use crate::{apikey, db, duration, sshkeys};

const OPTIONS: &[Opt] = &[
    super::OPT_CONFIG,
    super::OPT_DATABASE_URL,
    Opt::str("name").required(),
    Opt::str("ssh_key"),
    Opt::int("node_quota"),
    Opt::str("session_lifetime"),
    Opt::str("session_lifetime_max"),
    Opt::bool("is_admin"),
    Opt::bool("reset_api_key").default(Dflt::Bool(false)),
    Opt::str("api_key").no_log(),
    Opt::str("state")
        .choices(&["present", "retired"])
        .default(Dflt::Str("present")),
];

pub const MODULE: Module = Module {
    name: "duffy_tenant",
    spec: Spec::new(OPTIONS),
    run,
};

/// The settings asked for (None = leave as is).
#[derive(Debug, Default)]
struct Desired {
    ssh_key: Option<String>,
    node_quota: Option<u32>,
    session_lifetime: Option<Duration>,
    session_lifetime_max: Option<Duration>,
    is_admin: Option<bool>,
    api_key: Option<Uuid>,
    reset: bool,
}

fn lifetime(run: &Run, k: &'static str) -> anyhow::Result<Option<Duration>> {
    match run.params.str(k) {
        None => Ok(None),
        Some(s) => duration::parse_config_duration(s).map(Some).map_err(|_| {
            anyhow!("{k}: expected a duration like 6h, 1h30m, 2d or a number of seconds, got {s:?}")
        }),
    }
}

fn desired(run: &Run) -> anyhow::Result<Desired> {
    let p = &run.params;
    let node_quota = match p.int("node_quota") {
        None => None,
        Some(n) if n > 0 && n <= i64::from(i32::MAX) => Some(n as u32),
        Some(n) => bail!("node_quota: expected an integer > 0, got {n}"),
    };
    let api_key = match p.str("api_key") {
        None => None,
        Some(s) => Some(
            apikey::parse(s)
                .ok_or_else(|| anyhow!("api_key: expected a UUID (the key itself is not shown)"))?,
        ),
    };
    let reset = p.bool("reset_api_key").unwrap_or(false);
    if reset && api_key.is_some() {
        bail!("api_key and reset_api_key: true are mutually exclusive");
    }
    Ok(Desired {
        ssh_key: p.str("ssh_key").map(sshkeys::validate).transpose()?,
        node_quota,
        session_lifetime: lifetime(run, "session_lifetime")?,
        session_lifetime_max: lifetime(run, "session_lifetime_max")?,
        is_admin: p.bool("is_admin"),
        api_key,
        reset,
    })
}

fn secs(d: Option<Duration>) -> Value {
    d.map(duration::seconds_json).unwrap_or(Value::Null)
}

/// The row as shown in `diff` (no key hash).
fn view(t: &Tenant) -> Value {
    json!({
        "name": t.row.name,
        "active": t.active(),
        "is_admin": t.row.is_admin,
        "ssh_key": t.row.ssh_key,
        "node_quota": t.row.node_quota,
        "session_lifetime": secs(t.session_lifetime()),
        "session_lifetime_max": secs(t.session_lifetime_max()),
    })
}

/// What would change on `t` (field list for messages, changes for `tenant::update`).
fn changes(t: &Tenant, d: &Desired, key_matches: bool) -> (Vec<&'static str>, TenantChanges) {
    let mut fields = Vec::new();
    let mut ch = TenantChanges::default();
    if let Some(k) = &d.ssh_key {
        if *k != t.row.ssh_key {
            fields.push("ssh_key");
            ch.ssh_key = Some(k.clone());
        }
    }
    if let Some(q) = d.node_quota {
        if t.row.node_quota != Some(q as i32) {
            fields.push("node_quota");
            ch.node_quota = Some(Some(q));
        }
    }
    if let Some(l) = d.session_lifetime {
        if t.session_lifetime() != Some(l) {
            fields.push("session_lifetime");
            ch.session_lifetime = Some(Some(l));
        }
    }
    if let Some(l) = d.session_lifetime_max {
        if t.session_lifetime_max() != Some(l) {
            fields.push("session_lifetime_max");
            ch.session_lifetime_max = Some(Some(l));
        }
    }
    if let Some(a) = d.is_admin {
        if a != t.row.is_admin {
            fields.push("is_admin");
            ch.is_admin = Some(a);
        }
    }
    if d.reset {
        fields.push("api_key");
        ch.api_key = Some(ApiKeyChange::Reset);
    } else if let (Some(k), false) = (d.api_key, key_matches) {
        fields.push("api_key");
        ch.api_key = Some(ApiKeyChange::Set(k));
    }
    (fields, ch)
}

/// `view(t)` with `ch` applied (what check mode predicts).
fn predicted(t: &Tenant, d: &Desired, active: bool) -> Value {
    let mut v = view(t);
    v["active"] = json!(active);
    if let Some(k) = &d.ssh_key {
        v["ssh_key"] = json!(k);
    }
    if let Some(q) = d.node_quota {
        v["node_quota"] = json!(q);
    }
    if let Some(l) = d.session_lifetime {
        v["session_lifetime"] = secs(Some(l));
    }
    if let Some(l) = d.session_lifetime_max {
        v["session_lifetime_max"] = secs(Some(l));
    }
    if let Some(a) = d.is_admin {
        v["is_admin"] = json!(a);
    }
    v
}

fn key_warning(name: &str) -> String {
    format!(
        "The new API key of tenant {name} is returned once, in api_key: register this result with no_log: true and store the key safely (it cannot be shown again)"
    )
}

fn run(run: &mut Run) -> anyhow::Result<Outcome> {
    let d = desired(run)?;
    let name = run.params.str("name").unwrap_or_default().to_string();
    tenant::validate_name(&name)?;
    let state = run.params.str("state").unwrap_or("present").to_string();
    if state == "retired" {
        let ignored: Vec<&str> = [
            "ssh_key",
            "node_quota",
            "session_lifetime",
            "session_lifetime_max",
            "is_admin",
            "api_key",
        ]
        .into_iter()
        .filter(|k| run.params.is_set(k))
        .chain(d.reset.then_some("reset_api_key"))
        .collect();
        if !ignored.is_empty() {
            run.warn(format!(
                "state: retired ignores {} (a retired tenant cannot be changed)",
                ignored.join(", ")
            ));
        }
    }
    db::block_on(async {
        let duffy = Duffy::open(run).await?;
        let defaults = &duffy.cfg.defaults;
        let cur = match tenant::get(&duffy.db, defaults, &name).await {
            Ok(t) => Some(t),
            Err(TenantError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let who = actor(run);
        let header = format!("tenant {name}");
        match (state.as_str(), cur) {
            ("retired", None) => Ok(Outcome::new(false, format!("tenant {name} does not exist"))),
            ("retired", Some(t)) if !t.active() => Ok(Outcome::new(
                false,
                format!("tenant {name} is already retired"),
            )
            .with("tenant", t.to_json(true, None))
            .with("api_key_created", false)),
            ("retired", Some(t)) => {
                let before = view(&t);
                let mut after = before.clone();
                after["active"] = json!(false);
                let (msg, doc) = if run.check_mode {
                    (
                        format!("tenant {name} would be retired"),
                        t.to_json(true, None),
                    )
                } else {
                    let t = tenant::set_retired(&duffy.db, defaults, &name, true, &who).await?;
                    (format!("tenant {name} retired"), t.to_json(true, None))
                };
                Ok(Outcome::new(true, msg)
                    .diff(header, before, after)
                    .with("tenant", doc)
                    .with("api_key_created", false))
            }
            (_, None) => {
                let Some(ssh_key) = d.ssh_key.clone() else {
                    return Err(Failure::new(format!(
                        "tenant {name} does not exist: ssh_key is required to create it"
                    ))
                    .into());
                };
                let new = NewTenant {
                    name: name.clone(),
                    ssh_key,
                    is_admin: d.is_admin.unwrap_or(false),
                    node_quota: d.node_quota,
                    session_lifetime: d.session_lifetime,
                    session_lifetime_max: d.session_lifetime_max,
                };
                let after = json!({
                    "name": new.name,
                    "active": true,
                    "is_admin": new.is_admin,
                    "ssh_key": new.ssh_key,
                    "node_quota": new.node_quota,
                    "session_lifetime": secs(new.session_lifetime),
                    "session_lifetime_max": secs(new.session_lifetime_max),
                });
                if run.check_mode {
                    return Ok(
                        Outcome::new(true, format!("tenant {name} would be created"))
                            .diff(header, json!({}), after)
                            .with("api_key_created", false),
                    );
                }
                let (t, key) =
                    tenant::create_with_key(&duffy.db, defaults, &new, d.api_key, &who).await?;
                let mut out = Outcome::new(true, format!("tenant {name} created"))
                    .diff(header, json!({}), view(&t))
                    .with("tenant", t.to_json(true, None));
                if d.api_key.is_none() {
                    out = out
                        .with("api_key", key.to_string())
                        .with("api_key_created", true);
                    run.warn(key_warning(&name));
                } else {
                    out = out.with("api_key_created", false);
                }
                Ok(out)
            }
            (_, Some(t)) => {
                let key_matches = match d.api_key {
                    Some(k) if !d.reset => {
                        let hash = t.row.api_key_hash.clone();
                        tokio::task::spawn_blocking(move || apikey::verify(&k.to_string(), &hash))
                            .await?
                    }
                    _ => true,
                };
                let (mut fields, ch) = changes(&t, &d, key_matches);
                let unretire = !t.active();
                if unretire {
                    fields.insert(0, "active");
                }
                if fields.is_empty() {
                    return Ok(Outcome::new(false, format!("tenant {name} is up to date"))
                        .with("tenant", t.to_json(true, None))
                        .with("api_key_created", false));
                }
                let before = view(&t);
                let mut after = predicted(&t, &d, true);
                if ch.api_key.is_some() {
                    after["api_key"] = json!(if d.reset { "(new key)" } else { "(given key)" });
                }
                let what = fields.join(", ");
                if run.check_mode {
                    return Ok(Outcome::new(
                        true,
                        format!("tenant {name} would be changed: {what}"),
                    )
                    .diff(header, before, after)
                    .with("tenant", t.to_json(true, None))
                    .with("api_key_created", false));
                }
                // unretire and change in one transaction
                let (t, new_key) =
                    tenant::update_unretiring(&duffy.db, defaults, &name, unretire, &ch, &who)
                        .await?;
                let mut out = Outcome::new(true, format!("tenant {name} changed: {what}"))
                    .diff(header, before, after)
                    .with("tenant", t.to_json(true, None));
                match new_key {
                    Some(k) => {
                        out = out
                            .with("api_key", k.to_string())
                            .with("api_key_created", true);
                        run.warn(key_warning(&name));
                    }
                    None => out = out.with("api_key_created", false),
                }
                Ok(out)
            }
        }
    })
}
