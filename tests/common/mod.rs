//! Shared integration-test harness: a throw-away PostgreSQL database per test, dropped on drop.
//!
//! The server is the machine's PostgreSQL (`DUFFY_TEST_PG`, default
//! `postgresql://postgres@127.0.0.1:5432/postgres`); every test gets a database of its own, so
//! tests run in parallel without sharing state.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use duffy::db::{self, Db};

/// The admin URL of the test PostgreSQL server.
pub fn server_url() -> String {
    std::env::var("DUFFY_TEST_PG")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into())
}

/// A throw-away database.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

fn admin_exec(sql: String) {
    let url = server_url();
    std::thread::spawn(move || {
        db::block_on(async move {
            let cfg = db::url::parse(&url).expect("DUFFY_TEST_PG");
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect to test PostgreSQL");
            let h = tokio::spawn(conn);
            client.batch_execute(&sql).await.expect(&sql);
            drop(client);
            let _ = h.await;
        })
    })
    .join()
    .expect("admin sql thread");
}

impl TestDb {
    /// Create an empty database (no schema).
    pub fn empty() -> TestDb {
        let name = format!("duffy_test_{}", uuid::Uuid::new_v4().simple());
        admin_exec(format!("CREATE DATABASE {name}"));
        let base = server_url();
        let url = match base.rfind('/') {
            Some(i)
                if base[..i].contains("://") && base[..i].len() > base.find("://").unwrap() + 2 =>
            {
                format!("{}/{name}", &base[..i])
            }
            _ => format!("{base}/{name}"),
        };
        TestDb { name, url }
    }

    /// Create a database with duffy's schema applied.
    pub fn migrated() -> TestDb {
        let t = TestDb::empty();
        let url = t.url.clone();
        // own thread: callers may be inside a tokio runtime already
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let mut c = d.get().await.unwrap();
                db::migrate::run(&mut c).await.unwrap();
            })
        })
        .join()
        .unwrap();
        t
    }

    /// A pool on this database (call inside a runtime).
    pub async fn db(&self, size: usize) -> Db {
        Db::connect(&self.url, size).await.expect("connect test db")
    }

    /// Run SQL and return the first column of every row as text.
    pub fn query_strings(&self, sql: &str) -> Vec<Option<String>> {
        let url = self.url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let c = d.get().await.unwrap();
                let rows = c.simple_query(&sql).await.expect(&sql);
                rows.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).map(str::to_string))
                        }
                        _ => None,
                    })
                    .collect()
            })
        })
        .join()
        .unwrap()
    }

    /// Run SQL statements (no result).
    pub fn exec(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let c = d.get().await.unwrap();
                c.batch_execute(&sql).await.expect(&sql);
            })
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_exec(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A temporary directory with a duffy config pointing at `url`.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub const DEFAULTS_YAML: &str =
    "defaults:\n  session-lifetime: 6h\n  session-lifetime-max: 12h\n  node-quota: 10\n";

impl TestConfig {
    pub fn new(url: &str, extra: &str) -> TestConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duffy.yaml");
        std::fs::write(
            &path,
            format!("database:\n  sqlalchemy:\n    sync_url: {url}\n{DEFAULTS_YAML}{extra}"),
        )
        .unwrap();
        TestConfig { dir, path }
    }
}

/// Run the `duffy` binary with a clean environment (no user config, no DUFFY_* leaking in).
pub fn duffy(config: Option<&Path>, args: &[&str]) -> Output {
    duffy_cmd(config, args).output().expect("run duffy")
}

pub fn duffy_cmd(config: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duffy"));
    let home = std::env::temp_dir().join("duffy-test-empty-home");
    cmd.env_remove("DUFFY_CONFIG")
        .env_remove("DUFFY_DATABASE_URL")
        .env_remove("DUFFY_LOG")
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.args(args);
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A real ed25519 public key for tests.
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiBq493m1tooYiALmd9PJpwszntYIJ62bvnYyaDsrQA demo@ci";
