//! `duffy import-legacy`'s SQL: the reads of a Duffy v2 MariaDB (`users`, `userkeys`, `stock`,
//! `sessions`, `session_hosts`, `session_archive`, over `mysql_async`) and the PostgreSQL side
//! of the import (what an earlier import brought in, found through the v2 ids it kept in
//! `nodes.data.v2.stock_id` / `sessions.data.v2.id`; imported sessions with their v2 times).
//!
//! v2's schema drifted over its life (alembic revisions `688abba1b8da`, `8ac110f4ffce`,
//! `adad9ab20b29`; `session_hosts` of the pre-2018 code is still present in production), so the
//! columns are looked up in `information_schema` and every optional one is read as NULL when
//! absent. Text is read as the bytes stored (`SET NAMES binary`): v2's tables are latin1 and
//! its Python 2 code wrote UTF-8 into them, so bytes that are valid UTF-8 are taken as UTF-8
//! and anything else as Latin-1 — reported per row and column, never fatal.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::NaiveDateTime;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use serde_json::Value as Json;
use thiserror::Error;

use super::{DbError, GenericClient};
use crate::state::NodeState;

/// Where the v2 database is. `password` is a secret: this type's `Debug` never shows it.
#[derive(Clone)]
pub struct V2Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl std::fmt::Debug for V2Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for V2Target {
    /// `mysql://user@host:port/db` — never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mysql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// A failure reading the v2 database (never shows the password: MariaDB's messages do not).
#[derive(Debug, Error)]
pub enum V2Error {
    #[error("{target}: {msg}")]
    Db { target: String, msg: String },
    #[error("{target}: table {table} not found (is this a Duffy v2 database?)")]
    MissingTable { target: String, table: &'static str },
    #[error("{target}: column {table}.{column} not found (is this a Duffy v2 database?)")]
    MissingColumn {
        target: String,
        table: &'static str,
        column: &'static str,
    },
}

/// A text column as read: the text, and whether its bytes were not UTF-8 (read as Latin-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text {
    pub text: String,
    pub latin1: bool,
}

impl Text {
    fn decode(bytes: &[u8]) -> Text {
        match std::str::from_utf8(bytes) {
            Ok(s) => Text {
                text: s.to_string(),
                latin1: false,
            },
            Err(_) => Text {
                text: bytes.iter().map(|&b| b as char).collect(),
                latin1: true,
            },
        }
    }
}

/// A row of v2's `users` (a project).
#[derive(Debug, Clone)]
pub struct V2User {
    /// the API key (secret)
    pub apikey: Option<Text>,
    pub projectname: Option<Text>,
    pub jobname: Option<Text>,
    pub createdat: Option<NaiveDateTime>,
    pub limitnodes: Option<i64>,
}

/// A row of v2's `userkeys` (one SSH public key of a project).
#[derive(Debug, Clone)]
pub struct V2UserKey {
    pub id: i64,
    /// the project's API key (secret)
    pub project_id: Option<Text>,
    pub key: Option<Text>,
}

/// A row of v2's `stock` (a host).
#[derive(Debug, Clone)]
pub struct V2Stock {
    pub id: i64,
    pub hostname: Option<Text>,
    pub ip: Option<Text>,
    pub chassis: Option<Text>,
    pub used_count: Option<i64>,
    pub state: Option<Text>,
    pub comment: Option<Text>,
    pub distro: Option<Text>,
    pub rel: Option<Text>,
    pub ver: Option<Text>,
    pub arch: Option<Text>,
    pub pool: Option<i64>,
    pub console_port: Option<i64>,
    pub flavor: Option<Text>,
    pub session_id: Option<Text>,
    pub next_state: Option<Text>,
}

/// A row of v2's `sessions` or `session_archive`.
#[derive(Debug, Clone)]
pub struct V2Session {
    pub id: Text,
    pub delivered_at: Option<NaiveDateTime>,
    pub dropped_at: Option<NaiveDateTime>,
    /// the owner's API key (secret)
    pub apikey: Option<Text>,
    pub state: Option<Text>,
    pub jobid: Option<Text>,
    pub kind: Option<Text>,
    /// `sessions` (false) or `session_archive` (true)
    pub archived: bool,
}

/// A row of v2's `session_hosts` (pre-2018 link of a session to a host by name).
#[derive(Debug, Clone)]
pub struct V2SessionHost {
    pub ssid: Text,
    pub hostname: Text,
}

/// Everything the import reads from v2, in primary key order.
#[derive(Debug, Clone, Default)]
pub struct V2Data {
    pub users: Vec<V2User>,
    pub userkeys: Vec<V2UserKey>,
    pub stock: Vec<V2Stock>,
    pub sessions: Vec<V2Session>,
    pub session_hosts: Vec<V2SessionHost>,
}

/// Connect to the v2 database, time-limited.
pub async fn connect(t: &V2Target, timeout: Duration) -> Result<Conn, V2Error> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(t.host.clone())
        .tcp_port(t.port)
        .user(Some(t.user.clone()))
        .pass(t.password.clone())
        .db_name(Some(t.database.clone()))
        .prefer_socket(false)
        // the bytes as stored, whatever the tables' character sets (see the module doc)
        .init(vec!["SET NAMES binary"]);
    match tokio::time::timeout(timeout, Conn::new(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(v2_err(t, e)),
        Err(_) => Err(V2Error::Db {
            target: t.to_string(),
            msg: format!("no connection within {} s", timeout.as_secs()),
        }),
    }
}

fn v2_err(t: &V2Target, e: mysql_async::Error) -> V2Error {
    V2Error::Db {
        target: t.to_string(),
        msg: e.to_string(),
    }
}

fn text(v: &Value) -> Option<Text> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(Text::decode(b)),
        Value::Int(i) => Some(Text::decode(i.to_string().as_bytes())),
        Value::UInt(i) => Some(Text::decode(i.to_string().as_bytes())),
        other => Some(Text::decode(other.as_sql(true).as_bytes())),
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// `DATE`/`DATETIME` as sent by the text protocol; zero dates are NULL.
fn datetime(v: &Value) -> Option<NaiveDateTime> {
    let s = match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        _ => return None,
    };
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
}

fn col(r: &Row, i: usize) -> &Value {
    r.as_ref(i).unwrap_or(&Value::NULL)
}

/// `SELECT` list of `wanted` columns of `table`: present ones quoted, absent ones `NULL`.
fn select_list(cols: &BTreeSet<String>, wanted: &[&str]) -> String {
    wanted
        .iter()
        .map(|c| {
            if cols.contains(*c) {
                format!("`{c}`")
            } else {
                format!("NULL AS `{c}`")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read the whole v2 database in one consistent snapshot (InnoDB; v2's MyISAM tables have no
/// snapshots, the reads then follow each other).
pub async fn read(conn: &mut Conn, t: &V2Target) -> Result<V2Data, V2Error> {
    let e = |err| v2_err(t, err);
    let rows: Vec<(Vec<u8>, Vec<u8>)> = conn
        .query(
            "SELECT CAST(table_name AS BINARY), CAST(column_name AS BINARY) \
             FROM information_schema.columns WHERE table_schema = DATABASE()",
        )
        .await
        .map_err(e)?;
    let mut schema: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (table, column) in rows {
        schema
            .entry(String::from_utf8_lossy(&table).to_lowercase())
            .or_default()
            .insert(String::from_utf8_lossy(&column).to_lowercase());
    }
    let require = |table: &'static str, columns: &[&'static str]| {
        let Some(have) = schema.get(table) else {
            return Err(V2Error::MissingTable {
                target: t.to_string(),
                table,
            });
        };
        for column in columns {
            if !have.contains(*column) {
                return Err(V2Error::MissingColumn {
                    target: t.to_string(),
                    table,
                    column,
                });
            }
        }
        Ok(have.clone())
    };
    let users = require("users", &["apikey", "projectname"])?;
    let userkeys = require("userkeys", &["id", "project_id", "key"])?;
    let stock = require("stock", &["id", "hostname", "ip", "state"])?;
    let sessions = schema.get("sessions").cloned();
    let archive = schema.get("session_archive").cloned();
    let hosts = schema.get("session_hosts").cloned();
    for (cols, table) in [(&sessions, "sessions"), (&archive, "session_archive")] {
        if let Some(c) = cols {
            if !c.contains("id") || !c.contains("apikey") {
                return Err(V2Error::MissingColumn {
                    target: t.to_string(),
                    table: if table == "sessions" {
                        "sessions"
                    } else {
                        "session_archive"
                    },
                    column: if c.contains("id") { "apikey" } else { "id" },
                });
            }
        }
    }

    conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(e)?;
    let mut data = V2Data::default();
    let q = format!(
        "SELECT {} FROM users ORDER BY apikey",
        select_list(
            &users,
            &[
                "apikey",
                "projectname",
                "jobname",
                "createdat",
                "limitnodes"
            ]
        )
    );
    for r in conn.query::<Row, _>(q).await.map_err(e)? {
        data.users.push(V2User {
            apikey: text(col(&r, 0)),
            projectname: text(col(&r, 1)),
            jobname: text(col(&r, 2)),
            createdat: datetime(col(&r, 3)),
            limitnodes: int(col(&r, 4)),
        });
    }
    let q = format!(
        "SELECT {} FROM userkeys ORDER BY id",
        select_list(&userkeys, &["id", "project_id", "key"])
    );
    for r in conn.query::<Row, _>(q).await.map_err(e)? {
        data.userkeys.push(V2UserKey {
            id: int(col(&r, 0)).unwrap_or_default(),
            project_id: text(col(&r, 1)),
            key: text(col(&r, 2)),
        });
    }
    let q = format!(
        "SELECT {} FROM stock ORDER BY id",
        select_list(
            &stock,
            &[
                "id",
                "hostname",
                "ip",
                "chassis",
                "used_count",
                "state",
                "comment",
                "distro",
                "rel",
                "ver",
                "arch",
                "pool",
                "console_port",
                "flavor",
                "session_id",
                "next_state",
            ]
        )
    );
    for r in conn.query::<Row, _>(q).await.map_err(e)? {
        data.stock.push(V2Stock {
            id: int(col(&r, 0)).unwrap_or_default(),
            hostname: text(col(&r, 1)),
            ip: text(col(&r, 2)),
            chassis: text(col(&r, 3)),
            used_count: int(col(&r, 4)),
            state: text(col(&r, 5)),
            comment: text(col(&r, 6)),
            distro: text(col(&r, 7)),
            rel: text(col(&r, 8)),
            ver: text(col(&r, 9)),
            arch: text(col(&r, 10)),
            pool: int(col(&r, 11)),
            console_port: int(col(&r, 12)),
            flavor: text(col(&r, 13)),
            session_id: text(col(&r, 14)),
            next_state: text(col(&r, 15)),
        });
    }
    for (cols, table, archived) in [
        (&sessions, "sessions", false),
        (&archive, "session_archive", true),
    ] {
        let Some(cols) = cols else { continue };
        let q = format!(
            "SELECT {} FROM {table} ORDER BY delivered_at, id",
            select_list(
                cols,
                &[
                    "id",
                    "delivered_at",
                    "dropped_at",
                    "apikey",
                    "state",
                    "jobid",
                    "type"
                ]
            )
        );
        let q = if cols.contains("delivered_at") {
            q
        } else {
            q.replace("ORDER BY delivered_at, id", "ORDER BY id")
        };
        for r in conn.query::<Row, _>(q).await.map_err(e)? {
            let Some(id) = text(col(&r, 0)) else { continue };
            data.sessions.push(V2Session {
                id,
                delivered_at: datetime(col(&r, 1)),
                dropped_at: datetime(col(&r, 2)),
                apikey: text(col(&r, 3)),
                state: text(col(&r, 4)),
                jobid: text(col(&r, 5)),
                kind: text(col(&r, 6)),
                archived,
            });
        }
    }
    if let Some(cols) = &hosts {
        if cols.contains("ssid") && cols.contains("hostname") {
            let rows: Vec<Row> = conn
                .query("SELECT ssid, hostname FROM session_hosts ORDER BY ssid, hostname")
                .await
                .map_err(e)?;
            for r in rows {
                if let (Some(ssid), Some(hostname)) = (text(col(&r, 0)), text(col(&r, 1))) {
                    data.session_hosts.push(V2SessionHost { ssid, hostname });
                }
            }
        }
    }
    conn.query_drop("COMMIT").await.map_err(e)?;
    Ok(data)
}

// ---------------------------------------------------------------------------------------------
// the PostgreSQL side

/// A node an earlier import made (`data.v2.stock_id` set).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedNode {
    pub id: i32,
    pub stock_id: i64,
    pub state: NodeState,
    pub pool: Option<String>,
    pub retired: bool,
}

/// Nodes imported from v2, by stock id (the newest node of a stock id wins).
pub async fn imported_nodes(c: &impl GenericClient) -> Result<HashMap<i64, ImportedNode>, DbError> {
    let rows = c
        .query(
            "SELECT id, (data->'v2'->>'stock_id')::bigint, state::text, pool, retired_at IS NOT NULL
               FROM nodes WHERE data->'v2'->>'stock_id' IS NOT NULL ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let n = ImportedNode {
                id: r.get(0),
                stock_id: r.get(1),
                state: r.get(2),
                pool: r.get(3),
                retired: r.get(4),
            };
            (n.stock_id, n)
        })
        .collect())
}

/// A node in the way of an imported one: its hostname or address is taken by a node that
/// the partial unique indexes `active_hostname_index` / `active_ipaddr_index` cover.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenAddress {
    pub node_id: i32,
    pub hostname: Option<String>,
    pub ipaddr: Option<String>,
}

/// Non-retired nodes (any state: a `failed` one would block the same name once repaired)
/// holding one of `hostnames` or `ipaddrs`.
pub async fn nodes_holding(
    c: &impl GenericClient,
    hostnames: &[String],
    ipaddrs: &[String],
) -> Result<Vec<TakenAddress>, DbError> {
    let rows = c
        .query(
            "SELECT id, hostname, ipaddr FROM nodes
              WHERE retired_at IS NULL AND (hostname = ANY($1) OR ipaddr = ANY($2)) ORDER BY id",
            &[&hostnames, &ipaddrs],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TakenAddress {
            node_id: r.get(0),
            hostname: r.get(1),
            ipaddr: r.get(2),
        })
        .collect())
}

/// A session an earlier import made (`data.v2.id` set).
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedSession {
    pub id: i32,
    pub v2_id: String,
    pub tenant_id: i32,
    pub retired: bool,
}

/// Sessions imported from v2, by v2 session id.
pub async fn imported_sessions(
    c: &impl GenericClient,
) -> Result<HashMap<String, ImportedSession>, DbError> {
    let rows = c
        .query(
            "SELECT id, data->'v2'->>'id', tenant_id, retired_at IS NOT NULL
               FROM sessions WHERE data->'v2'->>'id' IS NOT NULL ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let s = ImportedSession {
                id: r.get(0),
                v2_id: r.get(1),
                tenant_id: r.get(2),
                retired: r.get(3),
            };
            (s.v2_id.clone(), s)
        })
        .collect())
}

/// A session as v2 had it: created at `created_at`, retired at `retired_at` (history) or
/// active until `expires_at`.
#[derive(Debug, Clone)]
pub struct ImportSession<'a> {
    pub tenant_id: i32,
    pub created_at: Option<NaiveDateTime>,
    pub expires_at: Option<NaiveDateTime>,
    pub retired_at: Option<NaiveDateTime>,
    pub data: &'a Json,
}

/// Insert an imported session; returns its id.
pub async fn insert_session(c: &impl GenericClient, s: &ImportSession<'_>) -> Result<i32, DbError> {
    Ok(c.query_one(
        "INSERT INTO sessions (tenant_id, expires_at, data, created_at, retired_at)
         VALUES ($1, $2, $3, COALESCE($4, now() AT TIME ZONE 'utc'), $5) RETURNING id",
        &[
            &s.tenant_id,
            &s.expires_at,
            s.data,
            &s.created_at,
            &s.retired_at,
        ],
    )
    .await?
    .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_utf8_else_latin1() {
        assert_eq!(
            Text::decode("caf\u{e9}".as_bytes()),
            Text {
                text: "caf\u{e9}".into(),
                latin1: false
            }
        );
        assert_eq!(
            Text::decode(b"caf\xe9 \xff"),
            Text {
                text: "caf\u{e9} \u{ff}".into(),
                latin1: true
            }
        );
    }

    #[test]
    fn dates() {
        let v = |s: &str| Value::Bytes(s.as_bytes().to_vec());
        assert_eq!(
            datetime(&v("2016-02-24")).unwrap().to_string(),
            "2016-02-24 00:00:00"
        );
        assert_eq!(
            datetime(&v("2024-05-01 10:00:00.5")).unwrap().to_string(),
            "2024-05-01 10:00:00.500"
        );
        assert_eq!(datetime(&v("0000-00-00 00:00:00")), None);
        assert_eq!(datetime(&Value::NULL), None);
        assert_eq!(int(&v(" 42")), Some(42));
    }

    #[test]
    fn target_never_shows_the_password() {
        let t = V2Target {
            host: "db".into(),
            port: 3306,
            user: "duffy".into(),
            password: Some("hunter2".into()),
            database: "duffy".into(),
        };
        assert_eq!(t.to_string(), "mysql://duffy@db:3306/duffy");
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
