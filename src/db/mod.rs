//! The only place in duffy that speaks SQL.
//!
//! One asynchronous layer on `tokio-postgres` with a `deadpool-postgres` pool: the server and the
//! scheduler share a multi-threaded runtime, short-lived processes (CLI, Ansible modules,
//! inventory) call the very same functions from a current-thread runtime ([`block_on`]).
//! Every multi-row change happens in one transaction opened by the caller of these functions
//! (functions take any `GenericClient`, so they compose inside a transaction).

pub mod audit;
pub mod inventory;
pub mod jobs;
pub mod legacy;
pub mod metrics;
pub mod migrate;
pub mod nodes;
pub mod outbox;
pub mod pools;
pub mod sessions;
pub mod tenants;
pub mod tls;
pub mod url;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use thiserror::Error;
use tokio_postgres::error::SqlState;

pub use tokio_postgres::GenericClient;

/// Database failures, with enough context for a one-line message (never a password).
#[derive(Debug, Error)]
pub enum DbError {
    /// A failed statement or connection; its text is [`describe_pg`]'s (tokio-postgres' own is
    /// only "db error").
    #[error("{}", describe_pg(.0))]
    Pg(tokio_postgres::Error),
    #[error("cannot connect to PostgreSQL ({target}): {msg}")]
    Connect { target: String, msg: String },
    #[error("invalid database URL: {0}")]
    Url(#[from] url::UrlError),
    #[error("{0}")]
    Migration(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The database is missing or its schema is not (or no longer) what this duffy needs; only
    /// `duffy migrate` creates, adopts or upgrades it.
    #[error("database {target} {problem}: run `duffy migrate` {fix}")]
    NotMigrated {
        /// `user@host:port/db`
        target: String,
        problem: String,
        /// what `duffy migrate` will do, e.g. "to create it"
        fix: &'static str,
    },
}

impl DbError {
    /// A connection to `target` that could not even be tried or made.
    pub fn connect(target: &str, e: impl std::fmt::Display) -> Self {
        DbError::Connect {
            target: target.to_string(),
            msg: e.to_string(),
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

/// One line for a PostgreSQL failure: the server's message with its SQLSTATE, the severity
/// unless it is `ERROR`, and the table, column and constraint it names (`duplicate key value
/// violates unique constraint "…" (SQLSTATE 23505, table tenants, constraint …)`), or the
/// client-side error and its causes (`error communicating with the server: Connection reset
/// by peer`). Never the server's DETAIL: it can quote row values (`Failing row contains (…)`,
/// a tenant's key hash).
fn describe_pg(e: &tokio_postgres::Error) -> String {
    let Some(d) = e.as_db_error() else {
        return error_chain(e);
    };
    let mut about = Vec::new();
    if d.severity() != "ERROR" {
        about.push(d.severity().to_string());
    }
    about.push(format!("SQLSTATE {}", d.code().code()));
    for (what, name) in [
        ("table", d.table()),
        ("column", d.column()),
        ("constraint", d.constraint()),
    ] {
        if let Some(name) = name {
            about.push(format!("{what} {name}"));
        }
    }
    format!("{} ({})", d.message(), about.join(", ")).replace('\n', " ")
}

impl DbError {
    /// The SQLSTATE of a server-side error, if any.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Pg(e) => e.code(),
            _ => None,
        }
    }

    /// Is the database out of reach — down, restarting, the connection lost — rather than
    /// answering with an error? (What a caller retries quickly and reports once per outage.)
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Connect { .. } => true,
            DbError::Pg(e) => {
                let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
                // 08: connection exception; 57P: admin/crash shutdown, cannot connect now
                let class = e
                    .code()
                    .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
                e.is_closed() || io || class
            }
            _ => false,
        }
    }

    /// Name of the violated unique constraint, for `23505` errors.
    pub fn unique_violation(&self) -> Option<String> {
        match self {
            DbError::Pg(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => e
                .as_db_error()
                .and_then(|d| d.constraint().map(str::to_string))
                .or_else(|| Some(String::new())),
            _ => None,
        }
    }
}

/// A failed connection attempt to `target`: a database that does not exist says so and names
/// `duffy migrate` (the only command that creates one); anything else keeps its whole cause.
pub(crate) fn connect_error(target: &str, e: &tokio_postgres::Error) -> DbError {
    if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
        return DbError::NotMigrated {
            target: target.to_string(),
            problem: "does not exist".into(),
            fix: "to create it",
        };
    }
    DbError::connect(target, error_chain(e))
}

/// An error and its sources on one line (`error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer`): tokio-postgres' own message leaves the cause out.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s.replace('\n', " ")
}

pub(crate) fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        cfg.get_user().unwrap_or("?"),
        host,
        port,
        url::dbname(cfg)
    )
}

/// A pool of connections to the duffy database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    target: String,
}

impl Db {
    /// Build a pool for `url` (SQLAlchemy or libpq form) and check that one connection works.
    pub async fn connect(url: &str, max_size: usize) -> Result<Db, DbError> {
        let (cfg, tls) = url::parse_tls(url)?;
        let target = describe(&cfg);
        let connector = tls::connector(&tls).map_err(|e| DbError::connect(&target, e))?;
        let mgr = Manager::from_config(
            cfg,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max_size.max(1))
            .build()
            .map_err(|e| DbError::connect(&target, e))?;
        let db = Db { pool, target };
        drop(db.get().await?);
        Ok(db)
    }

    /// [`Db::connect`], then refuse a database whose schema is missing or older than this
    /// duffy's ([`migrate::check`]): what every command but `duffy migrate` uses.
    pub async fn connect_migrated(url: &str, max_size: usize) -> Result<Db, DbError> {
        let db = Db::connect(url, max_size).await?;
        {
            let c = db.get().await?;
            migrate::check(&**c, &db.target).await?;
        }
        Ok(db)
    }

    /// A pooled connection (derefs to `tokio_postgres::Client`).
    pub async fn get(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(pg) => connect_error(&self.target, &pg),
            other => DbError::connect(&self.target, other),
        })
    }

    /// The pool's size, idle connections, waiting tasks and limit (for the metrics).
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }

    /// `user@host:port/db` (no password), for messages.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Double-quote an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Create the database named in `url` if it does not exist (connecting to `postgres` first).
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    let (cfg, tls) = url::parse_tls(url)?;
    let name = url::dbname(&cfg);
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let target = describe(&admin);
    let connector = tls::connector(&tls).map_err(|e| DbError::connect(&target, e))?;
    let (client, conn) = admin
        .connect(connector)
        .await
        .map_err(|e| DbError::connect(&target, error_chain(&e)))?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        match client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
        {
            Ok(()) => {}
            // created concurrently by someone else: fine
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = task.await;
    Ok(!exists)
}

/// Run a future to completion on a fresh current-thread runtime (for short-lived binaries).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}
