//! Database URLs: upstream's SQLAlchemy form (`postgresql+psycopg://user:pw@host:port/db`) and
//! plain libpq URLs/keyword strings, turned into a `tokio_postgres::Config` with libpq's defaults
//! (socket directory, then localhost; the OS user name). `sslmode` and `sslrootcert` are taken
//! out here (tokio-postgres knows neither `verify-ca` nor `verify-full`) and become a
//! [`Tls`] setting (see [`super::tls`]).

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

use super::tls::{SslMode, Tls};

#[derive(Debug, Error)]
pub enum UrlError {
    #[error("unsupported database URL scheme {0:?} (expected postgresql:// or postgres://)")]
    Scheme(String),
    #[error("invalid database URL: {0}")]
    Invalid(String),
}

/// Remove SQLAlchemy's `+driver` from the scheme: `postgresql+asyncpg://…` → `postgresql://…`.
pub fn strip_driver(url: &str) -> String {
    if let Some(idx) = url.find("://") {
        let scheme = &url[..idx];
        if let Some(plus) = scheme.find('+') {
            return format!("{}{}", &scheme[..plus], &url[idx..]);
        }
    }
    url.to_string()
}

/// Parse a database URL (SQLAlchemy or libpq form) into a connection config.
pub fn parse(url: &str) -> Result<tokio_postgres::Config, UrlError> {
    Ok(parse_tls(url)?.0)
}

/// Take `sslmode` and `sslrootcert` out of a URL (query string) or keyword string.
fn take_tls(url: &str) -> Result<(String, Tls), UrlError> {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: &str| -> bool {
        match k {
            "sslmode" => {
                mode = Some(v.to_string());
                true
            }
            "sslrootcert" => {
                root = Some(crate::percent::decode(v));
                true
            }
            _ => false,
        }
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, &crate::percent::decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k.trim(), v.trim())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mode = match mode {
        None => SslMode::default(),
        Some(m) => SslMode::parse(&m).ok_or_else(|| {
            UrlError::Invalid(format!(
                "sslmode: expected disable, allow, prefer, require, verify-ca or verify-full, not {m:?}"
            ))
        })?,
    };
    Ok((
        rest,
        Tls {
            mode,
            root_cert: root.map(PathBuf::from),
        },
    ))
}

/// [`parse`], plus the URL's TLS setting (`sslmode`, `sslrootcert`; default: no TLS).
pub fn parse_tls(url: &str) -> Result<(tokio_postgres::Config, Tls), UrlError> {
    let (url, tls) = take_tls(&strip_driver(url.trim()))?;
    if let Some(idx) = url.find("://") {
        let scheme = &url[..idx];
        if scheme != "postgresql" && scheme != "postgres" {
            return Err(UrlError::Scheme(scheme.to_string()));
        }
    }
    // A password must never reach an error message: tokio-postgres' errors don't echo input.
    let mut cfg =
        tokio_postgres::Config::from_str(&url).map_err(|e| UrlError::Invalid(e.to_string()))?;
    if cfg.get_hosts().is_empty() {
        if std::path::Path::new("/var/run/postgresql").exists() {
            cfg.host_path("/var/run/postgresql");
        } else {
            cfg.host("localhost");
        }
    }
    if cfg.get_user().is_none() {
        let user = std::env::var("PGUSER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "postgres".into());
        cfg.user(&user);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("duffy");
    }
    cfg.ssl_mode(tls.mode.negotiation());
    Ok((cfg, tls))
}

/// The database name a URL points at (for `CREATE DATABASE` when missing).
pub fn dbname(cfg: &tokio_postgres::Config) -> String {
    cfg.get_dbname()
        .map(str::to_string)
        .or_else(|| cfg.get_user().map(str::to_string))
        .unwrap_or_else(|| "postgres".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_sqlalchemy_driver() {
        assert_eq!(
            strip_driver("postgresql+psycopg://u:p@h:5/db"),
            "postgresql://u:p@h:5/db"
        );
        assert_eq!(strip_driver("postgresql://u@h/db"), "postgresql://u@h/db");
        let c = parse("postgresql+asyncpg://duffy:pw@127.0.0.1:5433/duffy").unwrap();
        assert_eq!(c.get_user(), Some("duffy"));
        assert_eq!(c.get_dbname(), Some("duffy"));
        assert_eq!(c.get_ports(), &[5433]);
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out() {
        let (c, t) = parse_tls(
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            c.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let (_, t) = parse_tls("host=h dbname=db sslmode=require user=u").unwrap();
        assert_eq!(
            t,
            Tls {
                mode: SslMode::Require,
                root_cert: None
            }
        );
        let (c, t) = parse_tls("postgresql://u@h/db").unwrap();
        assert_eq!(t.mode, SslMode::Disable);
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
        let e = parse_tls("postgresql://u:secretpw@h/db?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sslmode") && e.contains("sometimes") && !e.contains("secretpw"),
            "{e}"
        );
    }

    #[test]
    fn rejects_other_schemes_without_echoing_password() {
        let e = parse("mysql://u:secretpw@h/db").unwrap_err().to_string();
        assert!(e.contains("mysql") && !e.contains("secretpw"), "{e}");
        let e = parse("postgresql://u:secretpw@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secretpw"), "{e}");
    }
}
