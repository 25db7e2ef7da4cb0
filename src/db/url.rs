//! Database URLs: upstream's SQLAlchemy form (`postgresql+psycopg://user:pw@host:port/db`) and
//! plain libpq URLs/keyword strings, turned into a `tokio_postgres::Config` with libpq's defaults
//! (socket directory, then localhost; the OS user name).

use std::str::FromStr;

use thiserror::Error;

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
    let url = strip_driver(url.trim());
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
    Ok(cfg)
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
    fn rejects_other_schemes_without_echoing_password() {
        let e = parse("mysql://u:secretpw@h/db").unwrap_err().to_string();
        assert!(e.contains("mysql") && !e.contains("secretpw"), "{e}");
        let e = parse("postgresql://u:secretpw@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("secretpw"), "{e}");
    }
}
