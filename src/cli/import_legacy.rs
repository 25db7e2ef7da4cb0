//! `duffy import-legacy`: take over a Duffy v2 installation from its MariaDB (the work is
//! [`crate::legacy_import`]). Parses `--from`, finds the password (URL, `--password-file`,
//! `$DUFFY_LEGACY_PASSWORD`), prints the plan, writes the legacy API's usermap file.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{CliError, CliResult};
use crate::config::{mask_url, Config};
use crate::db::legacy::V2Target;
use crate::legacy_import;

/// Environment variable holding the v2 database password.
pub const ENV_PASSWORD: &str = "DUFFY_LEGACY_PASSWORD";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Args, Debug)]
#[command(after_help = "\
The password of the v2 database is a secret: rather than in --from (where `ps` shows it), give \
it in $DUFFY_LEGACY_PASSWORD or in a file (--password-file). The pool of every v2 host comes \
from the config section `legacy-import.pools`. Without --apply nothing is written.")]
pub struct ImportLegacyArgs {
    /// The Duffy v2 database: mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE
    #[arg(
        long,
        value_name = "URL",
        env = "DUFFY_LEGACY_URL",
        hide_env_values = true
    )]
    pub from: String,
    /// Write the import (one transaction); without it a dry run prints what it would do
    #[arg(long)]
    pub apply: bool,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Read the v2 database password from this file (first line); else $DUFFY_LEGACY_PASSWORD,
    /// else the password in --from
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// With --apply, write `metaclient.usermap` (v2 API key → tenant) for the legacy cico API
    /// to this config file (mode 0600; it holds API keys), e.g. /etc/duffy/60_legacy-usermap.yaml
    #[arg(long, value_name = "FILE")]
    pub usermap_file: Option<PathBuf>,
}

/// Parse `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (also `mariadb://`, SQLAlchemy's
/// `mysql+driver://`). Errors show the URL with its password masked.
pub fn parse_url(url: &str) -> Result<V2Target, String> {
    let bad = |why: &str| {
        // only a URL can have its password masked: anything else is not echoed
        let got = if url.contains("://") {
            format!(", got {}", mask_url(url))
        } else {
            String::new()
        };
        format!("--from: {why}: expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE{got}")
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let base = scheme.split('+').next().unwrap_or_default();
    if base != "mysql" && base != "mariadb" {
        return Err(bad(&format!("scheme {scheme:?} is not mysql")));
    }
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (userinfo, hostpart) = rest.rsplit_once('@').ok_or_else(|| bad("no user"))?;
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(crate::percent::decode(p))),
        None => (userinfo, None),
    };
    let user = crate::percent::decode(user);
    if user.is_empty() {
        return Err(bad("no user"));
    }
    let (hostport, database) = hostpart.split_once('/').ok_or_else(|| bad("no database"))?;
    let database = crate::percent::decode(database);
    if database.is_empty() || database.contains('/') {
        return Err(bad("no database"));
    }
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None | Some("") => 3306,
        Some(p) => p.parse().map_err(|_| bad("port is not a number"))?,
    };
    Ok(V2Target {
        host,
        port,
        user,
        password: password.filter(|p| !p.is_empty()),
        database,
    })
}

fn read_password_file(p: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        CliError::Usage(format!("--password-file: cannot read {}: {e}", p.display()))
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Write `text` to `path` with mode 0600, replacing it atomically.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = match dir {
        Some(d) => d.join(format!(".duffy-usermap-{}.tmp", std::process::id())),
        None => PathBuf::from(format!(".duffy-usermap-{}.tmp", std::process::id())),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let r = f
        .write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

pub async fn run(a: ImportLegacyArgs, cfg: &Config) -> CliResult {
    let mut target = parse_url(&a.from).map_err(CliError::Usage)?;
    if let Some(f) = &a.password_file {
        target.password = Some(read_password_file(f)?);
    } else if let Some(p) = std::env::var(ENV_PASSWORD).ok().filter(|p| !p.is_empty()) {
        target.password = Some(p);
    } else if target.password.is_some() {
        tracing::warn!(
            "the v2 database password is in --from, where other users see it (ps): use ${ENV_PASSWORD} or --password-file"
        );
    }
    if cfg.legacy_import.pools.is_empty() {
        tracing::warn!("config: legacy-import.pools is empty: no v2 host can be given a pool");
    }
    let db = super::connect(cfg, 2).await?;
    let plan = legacy_import::run(cfg, &db, &target, a.apply)
        .await
        .map_err(|e| CliError::Other(format!("import-legacy: {e}")))?;
    let mut out = match a.format {
        Format::Text => plan.to_text(),
        Format::Json => {
            let mut doc = plan.to_json();
            doc["from"] = target.to_string().into();
            doc["usermap_file"] = a
                .usermap_file
                .as_ref()
                .map(|p| p.display().to_string())
                .into();
            crate::output::to_python_json_indented(&doc) + "\n"
        }
    };
    if let Some(path) = &a.usermap_file {
        if a.apply {
            write_private(path, &plan.usermap_yaml()).map_err(|e| {
                CliError::Other(format!(
                    "import-legacy: imported, but the usermap could not be written to {}: {e}",
                    path.display()
                ))
            })?;
            if a.format == Format::Text {
                out.push_str(&format!(
                    "usermap: {} keys written to {}\n",
                    plan.tenants.len(),
                    path.display()
                ));
            }
        } else if a.format == Format::Text {
            out.push_str(&format!(
                "usermap: {} keys would be written to {}\n",
                plan.tenants.len(),
                path.display()
            ));
        }
    }
    if a.usermap_file.is_none() && a.format == Format::Text && !plan.tenants.is_empty() {
        out.push_str(
            "usermap: not written: the legacy cico API knows v2 keys through metaclient.usermap \
             (--usermap-file FILE)\n",
        );
    }
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("mysql://duffy:s%40cret@db.example:3307/duffy").unwrap();
        assert_eq!(
            (
                t.user.as_str(),
                t.password.as_deref(),
                t.host.as_str(),
                t.port
            ),
            ("duffy", Some("s@cret"), "db.example", 3307)
        );
        assert_eq!(t.to_string(), "mysql://duffy@db.example:3307/duffy");
        let t = parse_url("mysql+pymysql://root@[::1]/v2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.password), ("::1", 3306, None));
        for bad in [
            "postgresql://u:pw@h/db",
            "mysql://u:pw@h",
            "mysql://:pw@h/db",
            "mysql://u:pw@h:x/db",
            "u:pw@h/db",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(!e.contains("pw@"), "{e}");
            assert!(e.starts_with("--from: "), "{e}");
        }
    }
}
