//! `duffy import-legacy` against the real MariaDB (127.0.0.1:3306, or `$DUFFY_TEST_MARIADB` as
//! `mysql://root[:pw]@host:port`): each test loads Duffy v2's schema (the seed's `describe`
//! output; `sessions`/`session_hosts`/`session_archive` from v2's models and migrations, latin1
//! MyISAM tables as in production) and fixture rows, bad ones included — a broken SSH key, an
//! unknown arch, a session whose user is gone, two active sessions claiming one host, a project without a key, non-UTF-8 bytes in a
//! comment, an unknown state — into a database of its own (dropped at the end), and imports it
//! into a throw-away PostgreSQL database with the real `duffy` binary. The v2 API keys are then
//! used against a real `duffy serve`: `/api/v1` (HTTP Basic) and the legacy cico listener.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::Value;

const K_NFS: &str = "6a1b2c3d-1111-4111-8111-000000000001";
const K_CENTOS: &str = "6a1b2c3d-2222-4222-8222-000000000002";
const K_NOKEYS: &str = "6a1b2c3d-3333-4333-8333-000000000003";
const K_GONE: &str = "6a1b2c3d-4444-4444-8444-000000000004";
const K_LATE: &str = "6a1b2c3d-5555-4555-8555-000000000005";
const KEY1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpNFbklMvpsiUFsDBluUh7hnS0FKLlc2LKGpY1Il/B/ one@v2";
const KEY2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN1D4jG51Jpna+ZAinj0qGV10fpYl5CwFEow5UpnuoAi two@v2";

const SCHEMA: &str = "
CREATE TABLE users (
  apikey varchar(37) NOT NULL DEFAULT '', projectname varchar(50), jobname varchar(50),
  createdat date, limitnodes int(11), PRIMARY KEY (apikey)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE userkeys (
  id int(11) NOT NULL AUTO_INCREMENT, project_id varchar(37), `key` varchar(8192),
  PRIMARY KEY (id), KEY (project_id)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE sessions (
  id varchar(37) NOT NULL, delivered_at datetime, dropped_at datetime, apikey varchar(37),
  state varchar(15), jobid varchar(200), PRIMARY KEY (id)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE session_archive (
  id varchar(37) NOT NULL, node_id int(11), delivered_at datetime, dropped_at datetime,
  apikey varchar(37), state varchar(15), jobid varchar(200), PRIMARY KEY (id)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE session_hosts (ssid varchar(37), hostname varchar(20)) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE stock (
  id int(11) NOT NULL, hostname varchar(20), ip varchar(15), chassis varchar(20),
  used_count int(11), state varchar(20), comment varchar(255), distro varchar(20),
  rel varchar(10), ver varchar(10), arch varchar(10), pool int(11), console_port int(11),
  flavor varchar(20), session_id varchar(37), next_state varchar(20),
  PRIMARY KEY (id), KEY (session_id)
) ENGINE=MyISAM DEFAULT CHARSET=latin1;
CREATE TABLE alembic_version (version_num varchar(32) NOT NULL) ENGINE=MyISAM DEFAULT CHARSET=latin1;
INSERT INTO alembic_version VALUES ('8ac110f4ffce');
";

fn fixture() -> String {
    format!(
        "
INSERT INTO users VALUES
  ('{K_NFS}', 'nfs-ganesha', 'nfs-ganesha', '2016-02-24', 10),
  ('{K_CENTOS}', 'CentOS', 'centos_arrfab', '2015-04-17', 5),
  ('{K_NOKEYS}', 'nokeys', 'nokeys', '2020-01-01', 2);
INSERT INTO userkeys (id, project_id, `key`) VALUES
  (1, '{K_NFS}', '{KEY1}'),
  (2, '{K_NFS}', '{KEY2}'),
  (3, '{K_CENTOS}', 'ssh-rsa AAAAnotbase64!! broken@v2'),
  (4, '{K_CENTOS}', '{KEY2}');
INSERT INTO stock (id, hostname, ip, chassis, used_count, state, comment, distro, rel, ver, arch, pool, console_port, flavor, session_id, next_state) VALUES
  (1, 'n1.ci.centos.org', '172.19.0.1', 'chassis-1', 10, 'Ready', 'fine', 'centos', '7', '7', 'x86_64', 1, 4001, NULL, NULL, NULL),
  (2, 'n2.ci.centos.org', '172.19.0.2', 'chassis-1', 3, 'Deployed', NULL, 'centos', '7', '7', 'x86_64', 1, 4002, NULL, 'abc12345', NULL),
  (3, 'n3.ci.centos.org', '172.19.0.3', 'chassis-2', 4, 'Deployed', NULL, 'centos', '7', '7', 'x86_64', 1, 4003, NULL, 'abc12345', NULL),
  (4, 'n4.ci.centos.org', '172.19.0.4', 'chassis-2', 0, 'Active', X'636166E920FF', 'centos', '8', '8-stream', 'x86_64', 0, 4004, NULL, NULL, 'Ready'),
  (5, 'n5.ci.centos.org', '172.19.0.5', 'chassis-3', 1, 'Ready', NULL, 'centos', '7', '7', 'sparc64', 1, 4005, NULL, NULL, NULL),
  (6, 'n6.ci.centos.org', '172.19.0.6', 'chassis-3', 2, 'Deployed', NULL, 'centos', '7', '7', 'x86_64', 1, 4006, NULL, 'gone0001', NULL),
  (7, 'a7.ci.centos.org', '172.19.1.7', 'chassis-4', 9, 'Ready', 'arm', 'centos', '8', '8-stream', 'aarch64', 1, NULL, 'tiny', NULL, NULL),
  (8, 'n8.ci.centos.org', '172.19.0.8', 'chassis-4', 7, 'Failed', 'ansible exit 2', 'centos', '7', '7', 'x86_64', 0, 4008, NULL, NULL, NULL),
  (9, 'n9.ci.centos.org', '172.19.0.9', 'chassis-4', 7, 'Haunted', NULL, 'centos', '7', '7', 'x86_64', 1, 4009, NULL, NULL, NULL);
INSERT INTO sessions (id, delivered_at, dropped_at, apikey, state, jobid) VALUES
  ('abc12345', '2024-05-01 10:00:00', NULL, '{K_NFS}', 'Prod', 'job-1'),
  ('gone0001', '2024-05-01 11:00:00', NULL, '{K_GONE}', 'Prod', NULL),
  ('old00001', '2024-04-01 09:00:00', '2024-04-01 12:00:00', '{K_CENTOS}', 'Done', NULL),
  ('dup00001', '2024-05-01 12:00:00', NULL, '{K_NFS}', 'Prod', NULL);
INSERT INTO session_archive (id, node_id, delivered_at, dropped_at, apikey, state, jobid) VALUES
  ('arch0001', NULL, '2017-01-01 08:00:00', '2017-01-01 09:30:00', '{K_CENTOS}', 'Done', NULL);
INSERT INTO session_hosts VALUES ('arch0001', 'n1.ci.centos.org'), ('dup00001', 'n2.ci.centos.org');
"
    )
}

const POOLS: &[(&str, u32)] = &[("metal-x86", 1), ("metal-arm", 1)];

const LEGACY_IMPORT: &str = "legacy-import:
  pools:
    - pool: metal-x86
      arch: x86_64
      ver: [7, 8-stream]
    - pool: metal-arm
      arch: aarch64
      flavor: tiny
";

/// A throw-away MariaDB database holding a Duffy v2 schema, and a user of its own that can
/// read it with a password (the secret the tests look for in the output).
struct V2Db {
    admin: String,
    name: String,
    user: String,
    password: String,
}

fn admin_url() -> String {
    std::env::var("DUFFY_TEST_MARIADB").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// Run statements as the MariaDB admin (own thread: callers may be in a runtime).
fn maria_exec(db: Option<&str>, sql: &str) {
    let url = match db {
        Some(d) => format!("{}/{d}", admin_url()),
        None => admin_url(),
    };
    let sql = sql.to_string();
    std::thread::spawn(move || {
        duffy::db::block_on(async move {
            let opts = mysql_async::Opts::from_url(&url).expect("DUFFY_TEST_MARIADB");
            let mut c = mysql_async::Conn::new(opts)
                .await
                .expect("connect to the test MariaDB");
            for stmt in sql.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                c.query_drop(stmt)
                    .await
                    .unwrap_or_else(|e| panic!("{stmt}: {e}"));
            }
            c.disconnect().await.unwrap();
        })
    })
    .join()
    .expect("mariadb thread");
}

impl V2Db {
    fn new() -> V2Db {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let v = V2Db {
            admin: admin_url(),
            name: format!("duffy_v2_test_{id}"),
            user: format!("v2_{}", &id[..12]),
            password: format!("pw-{}", uuid::Uuid::new_v4().simple()),
        };
        maria_exec(
            None,
            &format!(
                "CREATE DATABASE {n};\nCREATE USER '{u}'@'%' IDENTIFIED BY '{p}';\nGRANT SELECT ON {n}.* TO '{u}'@'%'",
                n = v.name,
                u = v.user,
                p = v.password
            ),
        );
        maria_exec(Some(&v.name), SCHEMA);
        maria_exec(Some(&v.name), &fixture());
        v
    }

    fn exec(&self, sql: &str) {
        maria_exec(Some(&self.name), sql);
    }

    /// `--from` without the password (given through the environment).
    fn url(&self) -> String {
        let hostport = self
            .admin
            .rsplit_once('@')
            .map_or("127.0.0.1:3306", |h| h.1);
        format!("mysql://{}@{hostport}/{}", self.user, self.name)
    }

    fn url_with_password(&self, pw: &str) -> String {
        self.url().replacen('@', &format!(":{pw}@"), 1)
    }
}

impl Drop for V2Db {
    fn drop(&mut self) {
        maria_exec(
            None,
            &format!(
                "DROP DATABASE IF EXISTS {};\nDROP USER IF EXISTS '{}'@'%'",
                self.name, self.user
            ),
        );
    }
}

struct Env {
    v2: V2Db,
    db: TestDb,
    cfg: TestConfig,
}

fn setup() -> Env {
    let v2 = V2Db::new();
    let db = TestDb::migrated();
    let cfg = TestConfig::new(&db.url, &format!("{}{LEGACY_IMPORT}", pools_yaml(POOLS)));
    Env { v2, db, cfg }
}

impl Env {
    fn import(&self, extra: &[&str]) -> std::process::Output {
        let from = self.v2.url();
        let mut args = vec!["import-legacy", "--from", from.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = duffy_cmd(Some(&self.cfg.path), &args);
        cmd.env("DUFFY_LEGACY_PASSWORD", &self.v2.password);
        let o = output_within(cmd, Duration::from_secs(120));
        for text in [stdout(&o), stderr(&o)] {
            assert!(!text.contains(&self.v2.password), "password shown: {text}");
            for k in [K_NFS, K_CENTOS, K_NOKEYS, K_GONE, K_LATE] {
                assert!(!text.contains(k), "API key shown: {text}");
            }
        }
        o
    }

    fn json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--format", "json"];
        args.extend_from_slice(extra);
        let out = ok(&self.import(&args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Every row the import may write, as text, in a stable order.
    fn snapshot(&self) -> Vec<String> {
        let mut rows = Vec::new();
        for sql in [
            "SELECT concat_ws('|', id, name, is_admin, ssh_key, api_key, node_quota, created_at, retired_at) FROM tenants ORDER BY id",
            "SELECT concat_ws('|', id, hostname, ipaddr, state, comment, pool, reusable, data::text, created_at, retired_at) FROM nodes ORDER BY id",
            "SELECT concat_ws('|', id, tenant_id, expires_at, data::text, created_at, retired_at) FROM sessions ORDER BY id",
            "SELECT concat_ws('|', session_id, node_id, pool, data::text) FROM sessions_nodes ORDER BY 1",
            "SELECT concat_ws('|', id, entity, entity_id, action, actor, detail::text) FROM duffy_audit_log ORDER BY id",
            "SELECT concat_ws('|', id, node_id, from_state, to_state, actor, reason) FROM duffy_node_history ORDER BY id",
        ] {
            rows.push(format!("-- {sql}"));
            rows.extend(self.db.rows(sql));
        }
        rows
    }

    fn one(&self, sql: &str) -> String {
        self.db.one(sql)
    }
}

fn problem<'a>(doc: &'a Value, table: &str, id: &str) -> &'a Value {
    doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["table"] == table && p["id"] == id)
        .unwrap_or_else(|| panic!("no problem reported for {table} {id}: {doc:#}"))
}

fn line<'a>(doc: &'a Value, kind: &str, key: &str, val: &str) -> &'a Value {
    doc[kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l[key]
                .as_str()
                .map(str::to_string)
                .or(l[key].as_i64().map(|i| i.to_string()))
                .as_deref()
                == Some(val)
        })
        .unwrap_or_else(|| panic!("no {kind} line with {key}={val}: {doc:#}"))
}

#[test]
fn dry_run_writes_nothing_and_reports_bad_rows_by_id() {
    let e = setup();
    let before = e.snapshot();
    let doc = e.json(&[]);
    assert_eq!(e.snapshot(), before, "the dry run wrote");
    assert_eq!(doc["applied"], false);

    // tenants: the two projects with a valid key
    assert_eq!(doc["counts"]["tenants"]["create"], 2, "{doc:#}");
    let nfs = line(&doc, "tenants", "name", "nfs-ganesha");
    assert_eq!(
        (nfs["node_quota"].as_i64(), nfs["ssh_keys"].as_i64()),
        (Some(10), Some(2))
    );
    let centos = line(&doc, "tenants", "name", "CentOS");
    assert_eq!(centos["ssh_keys"], 1);
    // nodes: every stock row but the unknown arch and the unknown state
    assert_eq!(doc["counts"]["nodes"]["create"], 7, "{doc:#}");
    for (stock, state, pool) in [
        ("1", "ready", "metal-x86"),
        ("2", "deployed", "metal-x86"),
        ("3", "deployed", "metal-x86"),
        ("4", "unused", "metal-x86"),
        ("6", "failed", "metal-x86"),
        ("7", "ready", "metal-arm"),
        ("8", "failed", "metal-x86"),
    ] {
        let n = line(&doc, "nodes", "stock_id", stock);
        assert_eq!(
            (n["state"].as_str(), n["pool"].as_str()),
            (Some(state), Some(pool)),
            "{n}"
        );
    }
    // sessions: the active one, the Done one and the archived one
    let active = line(&doc, "sessions", "v2_id", "abc12345");
    assert_eq!(active["active"], true);
    assert_eq!(active["tenant"], "nfs-ganesha");
    assert_eq!(
        active["hostnames"],
        serde_json::json!(["n2.ci.centos.org", "n3.ci.centos.org"])
    );
    assert_eq!(line(&doc, "sessions", "v2_id", "old00001")["active"], false);
    assert_eq!(
        line(&doc, "sessions", "v2_id", "arch0001")["hostnames"],
        serde_json::json!(["n1.ci.centos.org"])
    );
    assert_eq!(doc["counts"]["sessions"]["create"], 3);

    // bad rows, by id
    let p = problem(&doc, "userkeys", "3");
    assert!(
        p["skipped"] == true && p["message"].as_str().unwrap().contains("invalid SSH key"),
        "{p}"
    );
    let p = problem(&doc, "stock", "5");
    assert!(p["message"].as_str().unwrap().contains("sparc64"), "{p}");
    let p = problem(&doc, "sessions", "gone0001");
    assert!(
        p["message"].as_str().unwrap().contains("not in users"),
        "{p}"
    );
    let p = problem(&doc, "stock", "4");
    assert!(
        p["skipped"] == false
            && p["message"]
                .as_str()
                .unwrap()
                .contains("comment is not valid UTF-8"),
        "{p}"
    );
    let p = problem(&doc, "stock", "9");
    assert!(p["message"].as_str().unwrap().contains("Haunted"), "{p}");
    let p = problem(&doc, "users", "nokeys");
    assert!(
        p["message"].as_str().unwrap().contains("no valid SSH key"),
        "{p}"
    );
    let p = problem(&doc, "sessions", "dup00001");
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("held by another active session"),
        "{p}"
    );
    let p = problem(&doc, "stock", "6");
    assert_eq!(p["skipped"], false, "{p}");

    // text: one line per tenant / node / session, the counts, no secret (checked by import())
    let text = ok(&e.import(&[]));
    assert!(
        text.contains("tenant  create    nfs-ganesha quota=10 ssh-keys=2"),
        "{text}"
    );
    assert!(text.contains("session create    v2=abc12345 tenant=nfs-ganesha active nodes=n2.ci.centos.org,n3.ci.centos.org"), "{text}");
    assert!(
        text.contains("skipped userkeys 3: invalid SSH key"),
        "{text}"
    );
    assert!(
        text.contains("nodes: 7 to create, 0 to update, 0 unchanged"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing written"), "{text}");
    assert!(text.contains("usermap: not written"), "{text}");
    assert_eq!(e.snapshot(), before, "the dry run wrote");
}

#[test]
fn apply_twice_gives_the_same_rows_and_v2_keys_authenticate() {
    let e = setup();
    let usermap = e
        .cfg
        .dir
        .path()
        .join("conf.d")
        .join("60_legacy-usermap.yaml");
    std::fs::create_dir_all(usermap.parent().unwrap()).unwrap();
    let um = usermap.to_str().unwrap();
    let doc = e.json(&["--apply", "--usermap-file", um]);
    assert_eq!(doc["applied"], true);

    // what was written
    let nfs_id = e.one("SELECT id FROM tenants WHERE name = 'nfs-ganesha'");
    assert_eq!(
        e.one("SELECT node_quota FROM tenants WHERE name = 'nfs-ganesha'"),
        "10"
    );
    assert_eq!(
        e.one("SELECT ssh_key FROM tenants WHERE name = 'nfs-ganesha'"),
        format!("{KEY1}\n{KEY2}")
    );
    assert_eq!(
        e.one("SELECT ssh_key FROM tenants WHERE name = 'CentOS'"),
        KEY2
    );
    assert_eq!(
        e.one("SELECT count(*) FROM tenants WHERE name = 'nokeys'"),
        "0"
    );
    assert!(e
        .one("SELECT api_key FROM tenants WHERE name = 'CentOS'")
        .starts_with("$2b$12$"));
    let n4 = e.one("SELECT concat_ws('|', state, pool, reusable, data->>'comment', data->>'chassis', data->>'console_port', data->>'used_count', data->'v2'->>'next_state') FROM nodes WHERE hostname = 'n4.ci.centos.org'");
    assert_eq!(
        n4,
        "unused|metal-x86|t|caf\u{e9} \u{ff}|chassis-2|4004|0|Ready"
    );
    assert_eq!(
        e.one("SELECT state FROM nodes WHERE hostname = 'a7.ci.centos.org'"),
        "ready"
    );
    assert_eq!(
        e.one("SELECT data->'error'->>'detail' FROM nodes WHERE hostname = 'n6.ci.centos.org'"),
        "lent in Duffy v2 without an active session that could be imported"
    );
    assert_eq!(
        e.one(
            "SELECT count(*) FROM nodes WHERE hostname IN ('n5.ci.centos.org', 'n9.ci.centos.org')"
        ),
        "0"
    );
    let sid = e.one("SELECT id FROM sessions WHERE data->'v2'->>'id' = 'abc12345'");
    assert_eq!(
        e.one(&format!("SELECT concat_ws('|', tenant_id, retired_at IS NULL, expires_at > now() AT TIME ZONE 'utc', created_at) FROM sessions WHERE id = {sid}")),
        format!("{nfs_id}|t|t|2024-05-01 10:00:00")
    );
    assert_eq!(
        e.db.rows(&format!("SELECT concat_ws('|', n.hostname, n.state, sn.pool) FROM sessions_nodes sn JOIN nodes n ON n.id = sn.node_id WHERE sn.session_id = {sid} ORDER BY n.hostname")),
        vec!["n2.ci.centos.org|deployed|metal-x86", "n3.ci.centos.org|deployed|metal-x86"]
    );
    assert_eq!(
        e.one("SELECT concat_ws('|', s.retired_at, string_agg(n.hostname, ',')) FROM sessions s JOIN sessions_nodes sn ON sn.session_id = s.id JOIN nodes n ON n.id = sn.node_id WHERE s.data->'v2'->>'id' = 'arch0001' GROUP BY s.id"),
        "2017-01-01 09:30:00|n1.ci.centos.org"
    );
    assert_eq!(
        e.one("SELECT count(*) FROM duffy_audit_log WHERE actor = 'import-legacy'"),
        "12"
    );
    let mode = std::fs::metadata(&usermap).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // again: nothing changes
    let first = e.snapshot();
    let doc = e.json(&["--apply", "--usermap-file", um]);
    assert_eq!(e.snapshot(), first, "the second --apply changed rows");
    for kind in ["tenants", "nodes", "sessions"] {
        assert_eq!(doc["counts"][kind]["create"], 0, "{doc:#}");
        assert_eq!(doc["counts"][kind]["update"], 0, "{doc:#}");
    }
    assert_eq!(doc["counts"]["nodes"]["unchanged"], 7);

    // rows added to v2 since are picked up
    e.v2.exec(&format!(
        "INSERT INTO users VALUES ('{K_LATE}', 'late', 'late', '2024-06-01', 3);
INSERT INTO userkeys (id, project_id, `key`) VALUES (5, '{K_LATE}', '{KEY1}'), (6, '{K_CENTOS}', '{KEY1}');
INSERT INTO stock (id, hostname, ip, chassis, used_count, state, comment, distro, rel, ver, arch, pool, console_port, flavor, session_id, next_state) VALUES
  (10, 'n10.ci.centos.org', '172.19.0.10', 'chassis-5', 1, 'Deployed', NULL, 'centos', '7', '7', 'x86_64', 1, 4010, NULL, 'new00001', NULL);
INSERT INTO sessions (id, delivered_at, dropped_at, apikey, state, jobid) VALUES ('new00001', '2024-06-02 10:00:00', NULL, '{K_LATE}', 'Prod', NULL)"
    ));
    let doc = e.json(&["--apply", "--usermap-file", um]);
    assert_eq!(doc["counts"]["tenants"]["create"], 1, "{doc:#}");
    assert_eq!(
        line(&doc, "tenants", "name", "CentOS")["changes"],
        serde_json::json!(["ssh_key"])
    );
    assert_eq!(doc["counts"]["nodes"]["create"], 1);
    assert_eq!(doc["counts"]["sessions"]["create"], 1);
    assert_eq!(
        e.one("SELECT ssh_key FROM tenants WHERE name = 'CentOS'"),
        format!("{KEY2}\n{KEY1}")
    );
    assert_eq!(
        e.one("SELECT concat_ws('|', t.name, n.state) FROM sessions s JOIN tenants t ON t.id = s.tenant_id JOIN sessions_nodes sn ON sn.session_id = s.id JOIN nodes n ON n.id = sn.node_id WHERE s.data->'v2'->>'id' = 'new00001'"),
        "late|deployed"
    );
    let third = e.snapshot();
    let doc = e.json(&["--apply", "--usermap-file", um]);
    assert_eq!(
        e.snapshot(),
        third,
        "a re-run after the pick-up changed rows"
    );
    assert_eq!(doc["counts"]["tenants"]["update"], 0);

    // the v2 keys work on /api/v1 and on the legacy API of `duffy serve`
    let conf = e.cfg.dir.path().join("conf.d");
    let base = std::fs::read_to_string(&e.cfg.path).unwrap();
    std::fs::write(
        conf.join("10_duffy.yaml"),
        format!("{base}metaclient:\n  poolmap:\n    - arch: x86_64\n      pool: metal-x86\n"),
    )
    .unwrap();
    let lp = free_port();
    let lps = lp.to_string();
    let server = Server::start_with(&conf, &["--legacy-port", &lps]);
    wait_listening(lp);
    let (status, body) = http(
        server.port,
        "/api/v1/sessions",
        Some(("nfs-ganesha", K_NFS)),
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let sessions = v["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{v:#}");
    assert_eq!(sessions[0]["id"].to_string(), sid);
    let (status, _) = http(
        server.port,
        "/api/v1/sessions",
        Some(("nfs-ganesha", K_CENTOS)),
    );
    assert_eq!(status, 401, "a wrong key");
    let (status, body) = http(server.port, "/api/v1/sessions", Some(("CentOS", K_CENTOS)));
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(lp, &format!("/Inventory?key={K_NFS}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("n2.ci.centos.org") && body.contains("n3.ci.centos.org"),
        "{body}"
    );
    let (status, body) = http(lp, &format!("/Inventory?key={K_LATE}"), None);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("n10.ci.centos.org"), "{body}");
    let (status, _) = http(lp, &format!("/Inventory?key={K_NOKEYS}"), None);
    assert_eq!(status, 403);
    drop(server);

    // a tenant retired in duffy is left as it is and gets no new active session
    let o = duffy(Some(&e.cfg.path), &["admin", "retire-tenant", "CentOS"]);
    assert!(o.status.success(), "{}", stderr(&o));
    e.v2.exec(&format!(
        "DELETE FROM userkeys WHERE id = 6;
INSERT INTO stock (id, hostname, ip, chassis, used_count, state, comment, distro, rel, ver, arch, pool, console_port, flavor, session_id, next_state) VALUES
  (11, 'n11.ci.centos.org', '172.19.0.11', 'chassis-5', 1, 'Deployed', NULL, 'centos', '7', '7', 'x86_64', 1, 4011, NULL, 'cen00001', NULL);
INSERT INTO sessions (id, delivered_at, dropped_at, apikey, state, jobid) VALUES ('cen00001', '2024-06-03 10:00:00', NULL, '{K_CENTOS}', 'Prod', NULL)"
    ));
    let doc = e.json(&["--apply"]);
    assert_eq!(
        line(&doc, "tenants", "name", "CentOS")["action"],
        "unchanged"
    );
    let p = problem(&doc, "sessions", "cen00001");
    assert!(
        p["skipped"] == true && p["message"].as_str().unwrap().contains("retired"),
        "{p}"
    );
    assert_eq!(
        e.one("SELECT ssh_key FROM tenants WHERE name = 'CentOS'"),
        format!("{KEY2}\n{KEY1}")
    );
    assert_eq!(
        e.one("SELECT state FROM nodes WHERE hostname = 'n11.ci.centos.org'"),
        "failed"
    );
}

#[test]
fn secrets_and_failures() {
    let e = setup();
    // a wrong password in the URL: exit 1, the password in no output
    let bad = "not-the-pw-4711";
    let from = e.v2.url_with_password(bad);
    let o = duffy(Some(&e.cfg.path), &["import-legacy", "--from", &from]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("Access denied"), "{err}");
    assert!(!err.contains(bad) && !stdout(&o).contains(bad), "{err}");
    // the password from a file
    let pwfile = e.cfg.dir.path().join("pw");
    std::fs::write(&pwfile, format!("{}\n", e.v2.password)).unwrap();
    let o = duffy(
        Some(&e.cfg.path),
        &[
            "import-legacy",
            "--from",
            &e.v2.url(),
            "--password-file",
            pwfile.to_str().unwrap(),
        ],
    );
    assert!(ok(&o).contains("dry run"));
    // not a v2 database
    e.v2.exec("DROP TABLE stock");
    let o = e.import(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("table stock not found"),
        "{}",
        stderr(&o)
    );
    // a bad URL is a usage error that does not echo the password
    let o = duffy(
        Some(&e.cfg.path),
        &["import-legacy", "--from", "mysql://u:sekrit@h:port/db"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--from: port is not a number") && !stderr(&o).contains("sekrit"),
        "{}",
        stderr(&o)
    );
    // the config: a rule naming no concrete pool is refused, naming the key
    let bad = TestConfig::new(
        &e.db.url,
        &format!(
            "{}legacy-import:\n  pools:\n    - pool: nosuch\n      arch: x86_64\n",
            pools_yaml(POOLS)
        ),
    );
    let o = duffy(Some(&bad.path), &["import-legacy", "--from", &e.v2.url()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("legacy-import.pools[0].pool"),
        "{}",
        stderr(&o)
    );
    let bad = TestConfig::new(
        &e.db.url,
        &format!(
            "{}legacy-import:\n  pools:\n    - pool: metal-x86\n      arch: {{a: 1}}\n",
            pools_yaml(POOLS)
        ),
    );
    let o = duffy(Some(&bad.path), &["config", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("legacy-import.pools[0].arch"),
        "{}",
        stderr(&o)
    );
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET target` → (status, body), with HTTP Basic credentials when given.
fn http(port: u16, target: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = auth
        .map(|(n, k)| format!("Authorization: Basic {}\r\n", basic_credentials(n, k)))
        .unwrap_or_default();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}
