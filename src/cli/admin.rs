//! `duffy admin …`: tenant administration straight on the database (seed SOP "Create new Duffy
//! tenant"). Text output and messages follow upstream (`OK: NAME: APIKEY`, `ERROR: …` /
//! `ERROR DETAIL: …`, Python notation for values); `--format json|yaml|flat` prints the API's
//! tenant document instead.

use std::io::Read;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{CliError, CliResult};
use crate::config::Config;
use crate::duration::{parse_config_duration, python_timedelta};
use crate::output::{self, Format};
use crate::tenant::{self, ApiKeyChange, NewTenant, Tenant, TenantChanges, TenantError, MASK};
use crate::{apikey, timefmt};

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// List tenants (active ones unless --all)
    ListTenants {
        /// Print names only
        #[arg(long, overrides_with = "no_quiet")]
        quiet: bool,
        #[arg(long, hide = true)]
        no_quiet: bool,
        /// Include retired tenants
        #[arg(long, overrides_with = "active")]
        all: bool,
        /// Only active tenants (default)
        #[arg(long)]
        active: bool,
    },
    /// Show a tenant (exit 1 if it does not exist)
    ShowTenant { name: String },
    /// Create a tenant and print its new API key once
    CreateTenant {
        #[arg(long, overrides_with = "no_is_admin")]
        is_admin: bool,
        #[arg(long, hide = true)]
        no_is_admin: bool,
        /// Maximum nodes in active sessions (N, or none for the default)
        #[arg(long, value_name = "N|none")]
        node_quota: Option<String>,
        /// Default session lifetime (e.g. 6h, 1h30m; none for the default)
        #[arg(long, value_name = "DURATION|none")]
        session_lifetime: Option<String>,
        /// Maximum session lifetime (none for the default)
        #[arg(long, value_name = "DURATION|none")]
        session_lifetime_max: Option<String>,
        name: String,
        /// SSH public key(s), one per line (- reads standard input)
        // hyphen values: a pasted key (even a private one) reaches the SSH key check, which
        // never shows it, instead of clap's "unexpected argument" that would print it
        #[arg(allow_hyphen_values = true)]
        ssh_key: String,
    },
    /// Change a tenant's SSH key, API key, quota or lifetimes
    UpdateTenant {
        /// New SSH public key(s), one per line (- reads standard input)
        #[arg(long, allow_hyphen_values = true)]
        ssh_key: Option<String>,
        /// A UUID to use as key, `reset` for a new random one, or `-` to read it from stdin
        #[arg(long, value_name = "UUID|reset|-")]
        api_key: Option<String>,
        /// Grant or revoke admin rights
        #[arg(long, value_name = "true|false")]
        is_admin: Option<bool>,
        #[arg(long, value_name = "N|none")]
        node_quota: Option<String>,
        #[arg(long, value_name = "DURATION|none")]
        session_lifetime: Option<String>,
        #[arg(long, value_name = "DURATION|none")]
        session_lifetime_max: Option<String>,
        name: String,
    },
    /// Retire a tenant (its active sessions expire now); --unretire reverses
    RetireTenant {
        #[arg(long, overrides_with = "unretire")]
        retire: bool,
        #[arg(long)]
        unretire: bool,
        name: String,
    },
    /// Make a retired tenant active again
    UnretireTenant { name: String },
    /// Give a tenant a new random API key and print it once
    ResetApiKey { name: String },
    /// Delete a retired pool's data (SOP "Retiring a node pool"; replaces remove-pool.sh)
    RemovePool {
        /// Show what would be deleted, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Also when the pool is still in the configuration
        #[arg(long)]
        force: bool,
        pool: String,
    },
}

fn is_none_word(s: &str) -> bool {
    s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("null")
}

fn parse_quota(opt: &str, s: &str) -> Result<Option<u32>, CliError> {
    if is_none_word(s) {
        return Ok(None);
    }
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(CliError::Usage(format!(
            "{opt}: expected an integer > 0 or none, got {s:?}"
        ))),
    }
}

fn parse_lifetime(opt: &str, s: &str) -> Result<Option<Duration>, CliError> {
    if is_none_word(s) {
        return Ok(None);
    }
    parse_config_duration(s).map(Some).map_err(|_| {
        CliError::Usage(format!(
            "{opt}: expected a duration like 6h, 1h30m, 3600 or none, got {s:?}"
        ))
    })
}

fn read_stdin_line(what: &str) -> Result<String, CliError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CliError::Usage(format!("{what}: cannot read standard input: {e}")))?;
    Ok(s.trim().to_string())
}

fn py_opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "None".into())
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

fn py_dur(d: Option<Duration>) -> String {
    d.map(python_timedelta).unwrap_or_else(|| "None".into())
}

fn fail(name: &str, e: TenantError) -> CliError {
    CliError::Failed {
        what: name.to_string(),
        detail: match e {
            TenantError::NotFound(_) => "Not Found".into(),
            other => other.to_string(),
        },
    }
}

/// Print one tenant document in a machine format.
fn print_doc(format: Format, action: &str, t: &Tenant, show_ssh: bool, api_key: Option<Value>) {
    let doc = json!({"action": action, "tenant": t.to_json(show_ssh, api_key)});
    match format {
        Format::Json | Format::Text => println!("{}", output::to_python_json(&doc)),
        Format::Yaml => print!("{}", output::to_yaml(&doc)),
        Format::Flat => println!("{}", output::flat_line(&doc["tenant"])),
    }
}

fn settings_text(t: &Tenant) -> String {
    format!(
        "node_quota={} effective_node_quota={} session_lifetime={} effective_session_lifetime={} session_lifetime_max={} effective_session_lifetime_max={}",
        py_opt(t.row.node_quota),
        py_opt(t.effective_node_quota),
        py_dur(t.session_lifetime()),
        py_dur(t.effective_session_lifetime),
        py_dur(t.session_lifetime_max()),
        py_dur(t.effective_session_lifetime_max),
    )
}

pub async fn run(a: AdminArgs, cfg: &Config) -> CliResult {
    let fmt = a.format;
    let defaults = &cfg.defaults;
    // validate arguments before touching the database
    let cmd = a.cmd;
    let db = super::connect(cfg, 1).await?;
    match cmd {
        AdminCmd::ListTenants { quiet, all, .. } => {
            let ts = tenant::list(&db, defaults, all)
                .await
                .map_err(|e| CliError::Failed {
                    what: "couldn't list tenants".into(),
                    detail: e.to_string(),
                })?;
            match fmt {
                Format::Text => {
                    for t in &ts {
                        if quiet {
                            println!("{}", t.row.name);
                        } else {
                            println!("OK: {}", t.row.name);
                        }
                    }
                }
                Format::Flat => {
                    for t in &ts {
                        println!("{}", output::flat_line(&t.to_json(false, None)));
                    }
                }
                _ => {
                    let doc = json!({"action": "get", "tenants": ts.iter().map(|t| t.to_json(false, None)).collect::<Vec<_>>()});
                    if fmt == Format::Yaml {
                        print!("{}", output::to_yaml(&doc));
                    } else {
                        println!("{}", output::to_python_json(&doc));
                    }
                }
            }
        }
        AdminCmd::ShowTenant { name } => {
            let t = tenant::get(&db, defaults, &name)
                .await
                .map_err(|e| fail(&name, e))?;
            if fmt == Format::Text {
                println!(
                    "OK: {}: id={} {} active={} created_at={} retired_at={}",
                    t.row.name,
                    t.row.id,
                    settings_text(&t),
                    py_bool(t.active()),
                    timefmt::python(&t.row.created_at),
                    t.row
                        .retired_at
                        .as_ref()
                        .map(timefmt::python)
                        .unwrap_or_else(|| "None".into()),
                );
            } else {
                print_doc(fmt, "get", &t, false, None);
            }
        }
        AdminCmd::CreateTenant {
            is_admin,
            node_quota,
            session_lifetime,
            session_lifetime_max,
            name,
            ssh_key,
            ..
        } => {
            let req = NewTenant {
                name: name.clone(),
                ssh_key: if ssh_key == "-" {
                    read_stdin_line("SSH_KEY")?
                } else {
                    ssh_key
                },
                is_admin,
                node_quota: node_quota
                    .as_deref()
                    .map(|s| parse_quota("--node-quota", s))
                    .transpose()?
                    .flatten(),
                session_lifetime: session_lifetime
                    .as_deref()
                    .map(|s| parse_lifetime("--session-lifetime", s))
                    .transpose()?
                    .flatten(),
                session_lifetime_max: session_lifetime_max
                    .as_deref()
                    .map(|s| parse_lifetime("--session-lifetime-max", s))
                    .transpose()?
                    .flatten(),
            };
            let (t, key) = tenant::create(&db, defaults, &req, "cli")
                .await
                .map_err(|e| fail(&name, e))?;
            if fmt == Format::Text {
                println!("OK: {}: {}", t.row.name, key);
            } else {
                print_doc(fmt, "post", &t, true, Some(json!(key.to_string())));
            }
        }
        AdminCmd::UpdateTenant {
            ssh_key,
            api_key,
            is_admin,
            node_quota,
            session_lifetime,
            session_lifetime_max,
            name,
        } => {
            let api_key = match api_key.as_deref() {
                None => None,
                Some("reset") => Some(ApiKeyChange::Reset),
                Some(s) => {
                    let text = if s == "-" {
                        read_stdin_line("--api-key")?
                    } else {
                        s.to_string()
                    };
                    match apikey::parse(&text) {
                        Some(u) => Some(ApiKeyChange::Set(u)),
                        None => return Err(CliError::Usage(
                            "--api-key: expected a UUID, `reset` or `-` (the value is not shown)"
                                .into(),
                        )),
                    }
                }
            };
            let ch = TenantChanges {
                ssh_key: match ssh_key {
                    Some(k) if k == "-" => Some(read_stdin_line("--ssh-key")?),
                    other => other,
                },
                api_key,
                is_admin,
                node_quota: node_quota
                    .as_deref()
                    .map(|s| parse_quota("--node-quota", s))
                    .transpose()?,
                session_lifetime: session_lifetime
                    .as_deref()
                    .map(|s| parse_lifetime("--session-lifetime", s))
                    .transpose()?,
                session_lifetime_max: session_lifetime_max
                    .as_deref()
                    .map(|s| parse_lifetime("--session-lifetime-max", s))
                    .transpose()?,
            };
            if ch.is_empty() {
                return Err(CliError::Failed {
                    what: "Either --ssh-key, --api-key, --node-quota, --session-lifetime or --session-lifetime-max must be set.".into(),
                    detail: "nothing to update".into(),
                });
            }
            let (t, new_key) = tenant::update(&db, defaults, &name, &ch, "cli")
                .await
                .map_err(|e| fail(&name, e))?;
            let shown = new_key
                .map(|k| k.to_string())
                .unwrap_or_else(|| MASK.into());
            if fmt == Format::Text {
                println!(
                    "OK: {}: ssh_key={MASK} api_key={shown} {}",
                    t.row.name,
                    settings_text(&t)
                );
            } else {
                print_doc(fmt, "put", &t, false, Some(json!(shown)));
            }
        }
        AdminCmd::RetireTenant { unretire, name, .. } => {
            retire(&db, cfg, fmt, &name, !unretire).await?;
        }
        AdminCmd::UnretireTenant { name } => {
            retire(&db, cfg, fmt, &name, false).await?;
        }
        AdminCmd::ResetApiKey { name } => {
            let ch = TenantChanges {
                api_key: Some(ApiKeyChange::Reset),
                ..Default::default()
            };
            let (t, key) = tenant::update(&db, defaults, &name, &ch, "cli")
                .await
                .map_err(|e| fail(&name, e))?;
            let key = key.map(|k| k.to_string()).unwrap_or_default();
            if fmt == Format::Text {
                println!("OK: {}: {key}", t.row.name);
            } else {
                print_doc(fmt, "put", &t, false, Some(json!(key)));
            }
        }
        AdminCmd::RemovePool {
            dry_run,
            force,
            pool,
        } => remove_pool(&db, cfg, &pool, dry_run, force).await?,
    }
    Ok(())
}

async fn remove_pool(
    db: &crate::db::Db,
    cfg: &Config,
    pool: &str,
    dry_run: bool,
    force: bool,
) -> CliResult {
    use crate::db::{audit, pools};
    if pool.trim().is_empty() {
        return Err(CliError::Usage("POOL: must not be empty".into()));
    }
    if cfg.pool(pool).is_some() && !force {
        return Err(CliError::Failed {
            what: pool.to_string(),
            detail: "the pool is still configured: remove it from the nodepools config and deploy that first (or use --force)".into(),
        });
    }
    let mut conn = db.get().await?;
    let tx = conn.transaction().await.map_err(crate::db::DbError::from)?;
    // the scheduler's fill lock of this pool: no fill runs while its rows go
    crate::db::jobs::lock_pool_fill(&*tx, pool).await?;
    let active = pools::active_sessions(&*tx, pool).await?;
    if !active.is_empty() {
        return Err(CliError::Failed {
            what: pool.to_string(),
            detail: format!(
                "active sessions still hold nodes of this pool: {} (retire them first)",
                active
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let r = pools::remove(&*tx, pool).await?;
    let summary = format!(
        "{} session links, {} sessions, {} nodes",
        r.session_links, r.sessions, r.nodes
    );
    if dry_run {
        tx.rollback().await.map_err(crate::db::DbError::from)?;
        println!("OK: {pool}: would remove {summary} (dry run, nothing changed)");
        return Ok(());
    }
    audit::record(
        &*tx,
        audit::Entity::Pool,
        None,
        "remove",
        "cli",
        json!({"pool": pool, "session_links": r.session_links, "sessions": r.sessions, "nodes": r.nodes}),
    )
    .await?;
    tx.commit().await.map_err(crate::db::DbError::from)?;
    println!("OK: {pool}: removed {summary}");
    Ok(())
}

async fn retire(
    db: &crate::db::Db,
    cfg: &Config,
    fmt: Format,
    name: &str,
    retired: bool,
) -> CliResult {
    let t = tenant::set_retired(db, &cfg.defaults, name, retired, "cli")
        .await
        .map_err(|e| fail(name, e))?;
    if fmt == Format::Text {
        println!("OK: {}: active={}", t.row.name, py_bool(t.active()));
    } else {
        print_doc(fmt, "put", &t, false, Some(Value::Null));
    }
    Ok(())
}
