//! Compatibility with the REAL upstream Duffy 3.4.0 (Python, from PyPI): `duffy migrate` adopts a
//! database made by upstream's `setup-db` without touching a row and is idempotent; upstream's
//! tools keep working on a database duffy migrated or created; older upstream revisions are
//! upgraded exactly as upstream's `duffy migration upgrade` would; unknown states are refused
//! without changing anything.
//!
//! Upstream lives in a venv at `$DUFFY_UPSTREAM_VENV` (default `<repo>/.venv-upstream`); when it
//! is missing the tests install it with `.ci/upstream-venv.sh`, so they cannot pass without
//! upstream. Upstream and duffy read the same config file (upstream needs `database.sqlalchemy`
//! with both `sync_url` and `async_url`, and `defaults` for the admin commands).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;

const HEAD: &str = "6654d536b836";
const UPSTREAM_TABLES: &str = "'nodes', 'sessions', 'sessions_nodes', 'tenants', 'alembic_version'";
/// The only things duffy adds to upstream's tables: the event outbox's plain AFTER ROW triggers
/// (migration 0004; checked in `fresh_schema_equals_upstream_setup_db`).
const DUFFY_TRIGGERS: &str =
    "'duffy_nodes_event', 'duffy_nodes_state_event', 'duffy_sessions_event', 'duffy_sessions_retired_event'";

// ---------------------------------------------------------------------------------------------
// upstream Duffy

fn venv_works(venv: &Path) -> bool {
    Command::new(venv.join("bin/duffy"))
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("3.4.0"))
        .unwrap_or(false)
}

/// The venv holding upstream Duffy 3.4.0. `.ci/upstream-venv.sh` runs once per test process: it
/// returns at once when the venv is complete (duffy 3.4.0 and its database drivers) and
/// installs it otherwise.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var_os("DUFFY_UPSTREAM_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join(".venv-upstream"));
        let o = Command::new("bash")
            .arg(repo().join(".ci/upstream-venv.sh"))
            .env("DUFFY_UPSTREAM_VENV", &venv)
            .output()
            .expect("run .ci/upstream-venv.sh");
        assert!(
            o.status.success(),
            ".ci/upstream-venv.sh failed:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(venv_works(&venv), "no working upstream duffy in {venv:?}");
        venv
    })
}

fn upstream_cmd(program: &str, config: &Path) -> Command {
    let mut cmd = Command::new(venv().join("bin").join(program));
    let home = std::env::temp_dir().join("duffy-test-empty-home");
    cmd.env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("DUFFY_CONFIG");
    if program == "duffy" {
        cmd.arg("-c").arg(config);
    }
    cmd
}

/// Run upstream's `duffy -c CONFIG ARGS…`.
fn upstream(config: &Path, args: &[&str]) -> Output {
    upstream_cmd("duffy", config)
        .args(args)
        .output()
        .expect("run upstream duffy")
}

fn must(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn upstream_ok(config: &Path, args: &[&str]) -> String {
    must(upstream(config, args), &format!("upstream duffy {args:?}"))
}

fn ours_ok(config: &Path, args: &[&str]) -> String {
    must(duffy(Some(config), args), &format!("duffy {args:?}"))
}

/// Parse `OK: NAME: <uuid>` of a create-tenant.
fn created_key(out: &str, name: &str) -> String {
    let key = out
        .trim()
        .strip_prefix(&format!("OK: {name}: "))
        .unwrap_or_else(|| panic!("unexpected create-tenant output: {out:?}"));
    uuid::Uuid::parse_str(key).expect("api key is a UUID");
    key.to_string()
}

/// A config file read by both upstream and duffy.
struct SharedConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// `sync`/`async_` are SQLAlchemy URL schemes, e.g. `postgresql` (psycopg2),
/// `postgresql+asyncpg`, `postgresql+psycopg` (psycopg 3, sync and async).
fn shared_config(db_url: &str, sync: &str, async_: &str) -> SharedConfig {
    let rest = &db_url[db_url.find("://").expect("database URL") + 3..];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("duffy.yaml");
    std::fs::write(
        &path,
        format!(
            "app:\n  host: 127.0.0.1\n  port: 8080\n  loglevel: info\n\
             database:\n  sqlalchemy:\n    sync_url: {sync}://{rest}\n    async_url: {async_}://{rest}\n\
             {DEFAULTS_YAML}"
        ),
    )
    .unwrap();
    SharedConfig { _dir: dir, path }
}

// ---------------------------------------------------------------------------------------------
// snapshots

fn one(db: &TestDb, sql: &str) -> String {
    db.query_strings(sql)
        .into_iter()
        .next()
        .flatten()
        .unwrap_or_default()
}

/// Every row of a table, as JSON text (json columns keep their exact text).
fn table_rows(db: &TestDb, table: &str) -> String {
    one(
        db,
        &format!("SELECT coalesce(json_agg(t ORDER BY t::text)::text, '[]') FROM {table} t"),
    )
}

/// The rows of upstream's data tables and the state of their id sequences.
fn data_snapshot(db: &TestDb) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = ["tenants", "sessions", "nodes", "sessions_nodes"]
        .iter()
        .map(|t| (t.to_string(), table_rows(db, t)))
        .collect();
    for seq in ["nodes_id_seq", "sessions_id_seq", "tenants_id_seq"] {
        s.push((
            seq.into(),
            one(
                db,
                &format!("SELECT last_value || ',' || is_called FROM {seq}"),
            ),
        ));
    }
    s
}

/// The DDL of upstream's tables as PostgreSQL reports it.
fn schema_snapshot(db: &TestDb) -> Vec<(String, String)> {
    let q = |label: &str, sql: String| (label.to_string(), one(db, &sql));
    vec![
        q(
            "tables",
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
             WHERE schemaname = 'public' AND tablename NOT LIKE 'duffy%'"
                .into(),
        ),
        q(
            "columns",
            format!(
                "SELECT string_agg(format('%s.%s %s(%s) null=%s default=%s', table_name, column_name, \
                 udt_name, character_maximum_length, is_nullable, column_default), E'\\n' \
                 ORDER BY table_name, ordinal_position) FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name IN ({UPSTREAM_TABLES})"
            ),
        ),
        q(
            "indexes",
            format!(
                "SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes \
                 WHERE schemaname = 'public' AND tablename IN ({UPSTREAM_TABLES})"
            ),
        ),
        q(
            "constraints",
            format!(
                "SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid), \
                 E'\\n' ORDER BY conrelid::regclass::text, conname) FROM pg_constraint \
                 WHERE connamespace = 'public'::regnamespace \
                 AND conrelid::regclass::text IN ({UPSTREAM_TABLES})"
            ),
        ),
        q(
            "triggers",
            format!(
                "SELECT coalesce(string_agg(tgrelid::regclass || ' ' || tgname, ',' ORDER BY tgname), '') \
                 FROM pg_trigger WHERE NOT tgisinternal \
                 AND tgrelid::regclass::text IN ({UPSTREAM_TABLES}) AND tgname NOT IN ({DUFFY_TRIGGERS})"
            ),
        ),
        q(
            "sequences",
            "SELECT string_agg(format('%s %s owned by %s', c.relname, s.seqtypid::regtype, \
             d.refobjid::regclass || '.' || a.attname), E'\\n' ORDER BY c.relname) \
             FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid \
             JOIN pg_depend d ON d.objid = c.oid AND d.deptype = 'a' \
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relname NOT LIKE 'duffy%'"
                .into(),
        ),
        q(
            "enum",
            "SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum \
             WHERE enumtypid = 'node_state_enum'::regtype"
                .into(),
        ),
    ]
}

/// The rows of `alembic_version`, or `<no table>`.
fn alembic(db: &TestDb) -> String {
    if one(db, "SELECT to_regclass('alembic_version') IS NULL") == "t" {
        return "<no table>".into();
    }
    table_rows(db, "alembic_version")
}

/// Everything in the database: upstream's rows and schema, and all of duffy's tables.
fn full_snapshot(db: &TestDb) -> Vec<(String, String)> {
    let mut s = data_snapshot(db);
    s.extend(schema_snapshot(db));
    s.push(("alembic_version".into(), alembic(db)));
    s.push((
        "all indexes".into(),
        one(
            db,
            "SELECT string_agg(indexdef, E'\\n' ORDER BY indexname) FROM pg_indexes \
             WHERE schemaname = 'public'",
        ),
    ));
    s.push((
        "functions".into(),
        one(
            db,
            "SELECT coalesce(string_agg(proname, ',' ORDER BY proname), '') FROM pg_proc \
             WHERE pronamespace = 'public'::regnamespace",
        ),
    ));
    for t in duffy_tables(db) {
        let rows = table_rows(db, &t);
        s.push((t, rows));
    }
    s
}

fn duffy_tables(db: &TestDb) -> Vec<String> {
    db.query_strings(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
         AND tablename LIKE 'duffy\\_%' ORDER BY 1",
    )
    .into_iter()
    .flatten()
    .collect()
}

fn assert_same(before: &[(String, String)], after: &[(String, String)], what: &str) {
    assert_eq!(before.len(), after.len(), "{what}: snapshot shape changed");
    for ((k1, v1), (k2, v2)) in before.iter().zip(after) {
        assert_eq!(k1, k2, "{what}: snapshot keys changed");
        assert_eq!(v1, v2, "{what}: `{k1}` changed");
    }
}

/// No trace of duffy: no table, no function.
fn assert_untouched_by_duffy(db: &TestDb) {
    assert_eq!(duffy_tables(db), Vec::<String>::new());
    assert_eq!(
        one(
            db,
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
             AND proname LIKE 'duffy%'"
        ),
        "0"
    );
}

// ---------------------------------------------------------------------------------------------
// data

/// Rows in every node state, sessions (active and retired) with their nodes, for a database
/// with the tenants `admin-t` and `tenant1`. Text and json columns hold odd spellings on purpose
/// (json keeps its exact text, unicode, nested values).
const ROWS_SQL: &str = r#"
INSERT INTO nodes (hostname, ipaddr, state, comment, pool, reusable, data, created_at, retired_at) VALUES
 ('n1.ci.test', '127.0.1.1', 'ready', NULL, 'virtual-centos9s-x86_64-small', false,
  '{"provision": {"hostname": "n1.ci.test", "ipaddr": "127.0.1.1", "opennebula_vm_id": 101}}',
  '2026-11-20 10:00:00.000001', NULL),
 ('n2.ci.test', '127.0.1.2', 'deployed', NULL, 'virtual-centos9s-x86_64-small', false,
  '{"provision": {"hostname": "n2.ci.test", "ipaddr": "127.0.1.2"}, "nodes_spec": {"quantity": 2, "pool": "virtual-centos9s-x86_64-small"}}',
  '2026-11-20 10:00:01', NULL),
 ('n3.ci.test', '127.0.1.3', 'contextualizing', NULL, 'virtual-centos9s-x86_64-small', false,
  '{"nodes_spec":{"quantity":2,"pool":"virtual-centos9s-x86_64-small"},  "b": [1, 2.50, null, "x"]}',
  '2026-11-20 10:00:02', NULL),
 ('bm1.ci.test', '127.0.2.1', 'unused', NULL, NULL, true, '{"architecture": "x86_64"}',
  '2026-11-01 08:00:00', NULL),
 ('bm2.ci.test', '127.0.2.2', 'deployed', 'Rack 3 — Ünïcode ✓', 'physical-centos9s-aarch64', true,
  '{"architecture": "aarch64", "nodes_spec": {"quantity": 1, "pool": "physical-centos9s-aarch64"}}',
  '2026-11-01 08:00:01', NULL),
 (NULL, NULL, 'provisioning', NULL, 'virtual-centos9s-x86_64-small', false, '{}',
  '2026-11-20 10:05:00', NULL),
 ('n4.ci.test', '127.0.1.4', 'failed', 'needs an operator', 'virtual-centos9s-x86_64-small', false,
  '{"error": {"failed_at": "2026-11-20T10:06:00.123456", "detail": "provisioning failed"}}',
  '2026-11-20 10:06:00', NULL),
 ('n4.ci.test', '127.0.1.4', 'ready', NULL, 'virtual-centos9s-x86_64-small', false, '{}',
  '2026-11-20 10:07:00', NULL),
 ('n5.ci.test', '127.0.1.5', 'done', NULL, NULL, false, '{"provision": {"hostname": "n5.ci.test"}}',
  '2026-11-19 09:00:00', '2026-11-19 15:00:00.5'),
 ('n6.ci.test', '127.0.1.6', 'deprovisioning', NULL, NULL, false, '{}',
  '2026-11-19 09:00:00', NULL);
-- ids burnt by upstream (failed session creations) leave gaps
SELECT setval('sessions_id_seq', 40);
INSERT INTO sessions (tenant_id, expires_at, data, created_at, retired_at) VALUES
 ((SELECT id FROM tenants WHERE name = 'tenant1'), '2026-11-20 16:00:00',
  '{"nodes_specs": [{"quantity": 2, "pool": "virtual-centos9s-x86_64-small"}]}',
  '2026-11-20 10:00:03', NULL),
 ((SELECT id FROM tenants WHERE name = 'admin-t'), '2026-11-20 22:00:00',
  '{"nodes_specs": [{"quantity": 1, "pool": "physical-centos9s-aarch64"}]}',
  '2026-11-20 10:00:04', NULL),
 ((SELECT id FROM tenants WHERE name = 'tenant1'), '2026-11-19 15:00:00',
  '{"nodes_specs": [{"quantity": 1, "pool": "virtual-centos9s-x86_64-small"}]}',
  '2026-11-19 09:00:01', '2026-11-19 15:00:00.25');
INSERT INTO sessions_nodes (session_id, node_id, pool, data)
 SELECT s.id, n.id, p.pool, n.data
   FROM (VALUES (41, 'n2.ci.test', 'virtual-centos9s-x86_64-small'),
                (41, 'n3.ci.test', 'virtual-centos9s-x86_64-small'),
                (42, 'bm2.ci.test', 'physical-centos9s-aarch64'),
                (43, 'n5.ci.test', 'virtual-centos9s-x86_64-small'),
                (43, 'n6.ci.test', 'virtual-centos9s-x86_64-small')) AS p(sid, host, pool)
   JOIN sessions s ON s.id = p.sid
   JOIN nodes n ON n.hostname = p.host;
"#;

/// Like `ROWS_SQL`, for schemas whose unique indexes do not yet exclude `failed` nodes
/// (revisions before 36cf064c0481): no failed node shares a hostname with a ready one.
fn rows_sql_old_indexes() -> String {
    ROWS_SQL.replace(
        "('n4.ci.test', '127.0.1.4', 'ready'",
        "('n7.ci.test', '127.0.1.7', 'ready'",
    )
}

/// The tenants `ROWS_SQL` needs, written directly (databases built without upstream's admin).
/// The key of both is `TENANTS_SQL_KEY` (bcrypt cost 4, as Python's bcrypt made it).
const TENANTS_SQL: &str = r#"
INSERT INTO tenants (name, is_admin, ssh_key, api_key, node_quota, session_lifetime, created_at) VALUES
  ('admin-t', true, 'ssh-ed25519 AAAA admin', '$2b$04$C3ZKFLyHMasNCsT5fAaO/umNR4MCdziwZP17iNCC.OKLLJ5cT7YVq',
   NULL, NULL, '2026-01-02 03:04:05.678901'),
  ('tenant1', false, 'ssh-ed25519 AAAA t1', '$2b$04$C3ZKFLyHMasNCsT5fAaO/umNR4MCdziwZP17iNCC.OKLLJ5cT7YVq',
   4, '2 hours', '2026-01-02 03:04:06');
"#;
const TENANTS_SQL_KEY: &str = "ae6c10d0-0b13-554c-b976-a05d8a18f0cc";

fn count(db: &TestDb, sql: &str) -> i64 {
    one(db, sql).parse().expect(sql)
}

fn create_upstream_tenants(cfg: &Path) -> (String, String) {
    let out = upstream_ok(
        cfg,
        &["admin", "create-tenant", "--is-admin", "admin-t", SSH_KEY],
    );
    let admin_key = created_key(&out, "admin-t");
    let two_keys = format!("{SSH_KEY}\n{SSH_KEY} second");
    let out = upstream_ok(
        cfg,
        &[
            "admin",
            "create-tenant",
            "--node-quota",
            "5",
            "--session-lifetime",
            "1h",
            "--session-lifetime-max",
            "1d",
            "tenant1",
            &two_keys,
        ],
    );
    let tenant_key = created_key(&out, "tenant1");
    (admin_key, tenant_key)
}

// ---------------------------------------------------------------------------------------------
// a. adopting a database made by upstream 3.4.0

#[test]
fn adopts_upstream_3_4_database_without_touching_data_and_is_idempotent() {
    let db = TestDb::empty();
    // production-like drivers: psycopg2 (sync) and asyncpg (async)
    let cfg = shared_config(&db.url, "postgresql", "postgresql+asyncpg");
    let cfg = cfg.path.as_path();

    let out = upstream_ok(cfg, &["setup-db"]);
    assert!(out.contains("Creating database schema"), "{out}");
    let (admin_key, tenant_key) = create_upstream_tenants(cfg);
    // a retired tenant too
    let out = upstream_ok(cfg, &["admin", "create-tenant", "gone", SSH_KEY]);
    created_key(&out, "gone");
    upstream_ok(cfg, &["admin", "retire-tenant", "gone"]);
    db.exec(ROWS_SQL);
    assert_eq!(count(&db, "SELECT count(*) FROM nodes"), 10);
    assert_eq!(count(&db, "SELECT count(*) FROM sessions_nodes"), 5);
    assert_eq!(alembic(&db), format!("[{{\"version_num\":\"{HEAD}\"}}]"));

    let up_show: Vec<String> = ["admin-t", "tenant1", "gone"]
        .iter()
        .map(|n| upstream_ok(cfg, &["admin", "show-tenant", n]))
        .collect();
    let up_list = upstream_ok(cfg, &["admin", "list-tenants", "--all"]);
    let before_data = data_snapshot(&db);
    let before_schema = schema_snapshot(&db);
    let before_alembic = alembic(&db);

    // first migrate: adopts, adds only duffy's own tables
    let out = ours_ok(cfg, &["migrate"]);
    assert!(
        out.contains(HEAD),
        "migrate output names the revision: {out}"
    );
    assert!(!out.contains("Nothing to upgrade."), "{out}");
    assert_same(&before_data, &data_snapshot(&db), "rows after migrate");
    assert_same(
        &before_schema,
        &schema_snapshot(&db),
        "schema after migrate",
    );
    assert_eq!(before_alembic, alembic(&db));
    let ours = duffy_tables(&db);
    assert!(
        ours.iter().any(|t| t == "duffy_schema_migrations") && ours.len() >= 2,
        "duffy's tables: {ours:?}"
    );
    assert!(count(&db, "SELECT count(*) FROM duffy_schema_migrations") >= 1);

    // second migrate: nothing at all changes
    let before = full_snapshot(&db);
    let out = ours_ok(cfg, &["migrate"]);
    assert!(out.contains("Nothing to upgrade."), "{out}");
    assert_same(&before, &full_snapshot(&db), "second migrate");
    let out = ours_ok(cfg, &["migrate", "--status"]);
    assert!(out.contains(&format!("{HEAD} (head)")), "{out}");

    // upstream still recognises and serves its database
    let out = upstream_ok(cfg, &["migration", "db-version"]);
    assert_eq!(out.trim(), format!("{HEAD} (head)"));
    let out = upstream_ok(cfg, &["migration", "upgrade"]);
    assert!(out.contains("Nothing to upgrade."), "{out}");
    for (name, before) in ["admin-t", "tenant1", "gone"].iter().zip(&up_show) {
        let up = upstream_ok(cfg, &["admin", "show-tenant", name]);
        assert_eq!(&up, before, "upstream show-tenant {name} after migrate");
        // ours prints the very same line for an upstream-created tenant
        let mine = ours_ok(cfg, &["admin", "show-tenant", name]);
        assert_eq!(mine, up, "our show-tenant {name} vs upstream's");
    }
    assert!(up_show[1].contains(
        "node_quota=5 effective_node_quota=5 session_lifetime=1:00:00 \
         effective_session_lifetime=1:00:00 session_lifetime_max=1 day, 0:00:00"
    ));
    assert!(up_show[2].contains("active=False"), "{}", up_show[2]);
    assert_eq!(
        upstream_ok(cfg, &["admin", "list-tenants", "--all"]),
        up_list
    );
    let up_active = upstream_ok(cfg, &["admin", "list-tenants"]);
    assert_eq!(up_active, "OK: admin-t\nOK: tenant1\n");
    assert_eq!(ours_ok(cfg, &["admin", "list-tenants"]), up_active);

    // the keys upstream printed verify against the hashes upstream stored
    let hash = |name: &str| {
        one(
            &db,
            &format!("SELECT api_key FROM tenants WHERE name = '{name}'"),
        )
    };
    let (admin_hash, tenant_hash) = (hash("admin-t"), hash("tenant1"));
    assert!(admin_hash.starts_with("$2b$12$"), "{admin_hash}");
    assert!(duffy::apikey::verify(&admin_key, &admin_hash));
    assert!(duffy::apikey::verify(&tenant_key, &tenant_hash));
    assert!(!duffy::apikey::verify(&tenant_key, &admin_hash));
    assert!(!duffy::apikey::verify(
        &admin_key.to_uppercase(),
        &admin_hash
    ));
    // …and the admin commands of both sides changed nothing
    assert_same(&before, &full_snapshot(&db), "after the admin commands");
}

// ---------------------------------------------------------------------------------------------
// b. upstream's tools on a database duffy created

/// Upstream's own key check (`Tenant.validate_api_key`, what its API's auth calls) and a bare
/// `bcrypt.checkpw`, on the stored row.
const PY_CHECK_KEY: &str = r#"
import sys, bcrypt
from sqlalchemy import select
from duffy.configuration import read_configuration
read_configuration(sys.argv[1], clear=True, validate=True)
from duffy.database import init_sync_model, sync_session_maker
from duffy.database.model import Tenant
init_sync_model()
with sync_session_maker() as s:
    t = s.execute(select(Tenant).filter_by(name=sys.argv[2])).scalar_one()
    stored = t.api_key
    model = t.validate_api_key(sys.argv[3])
raw = bcrypt.checkpw(sys.argv[3].encode(), stored.encode())
print(f"model={model} bcrypt={raw}")
"#;

/// Upstream's ORM: a node provisioned, lent to a session of tenant `theirs`, the session
/// retired — each step its own commit, as upstream's API and worker do.
const PY_WRITE_NODES: &str = r#"
import sys, datetime
from sqlalchemy import select
from duffy.configuration import read_configuration
read_configuration(sys.argv[1], clear=True, validate=True)
from duffy.database import init_sync_model, sync_session_maker
from duffy.database.model import Node, Session, SessionNode, Tenant
from duffy.database.types import NodeState
init_sync_model()
with sync_session_maker() as s:
    n = Node(hostname="up1", pool="p", state=NodeState.provisioning)
    s.add(n)
    s.commit()
    n.state = NodeState.ready
    s.commit()
    t = s.execute(select(Tenant).filter_by(name="theirs")).scalar_one()
    sess = Session(tenant=t)
    s.add(sess)
    s.commit()
    s.add(SessionNode(session=sess, node=n, pool="p"))
    n.state = NodeState.deployed
    s.commit()
    sess.retired_at = datetime.datetime.now(datetime.timezone.utc)
    s.commit()
print("ok")
"#;

/// A copy of `cfg` (a file) with `extra` YAML appended, next to it.
fn shared_dir_config(cfg: &Path, extra: &str) -> PathBuf {
    let p = cfg.with_extension("bus.yaml");
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(&p, format!("{text}{extra}")).unwrap();
    p
}

fn upstream_checks_key(cfg: &Path, name: &str, key: &str) -> String {
    let o = upstream_cmd("python", cfg)
        .args(["-c", PY_CHECK_KEY])
        .arg(cfg)
        .args([name, key])
        .output()
        .expect("run upstream python");
    must(o, "upstream key check").trim().to_string()
}

#[test]
fn upstream_tools_work_on_a_database_duffy_created() {
    let db = TestDb::empty();
    // psycopg 3 for both engines
    let cfg = shared_config(&db.url, "postgresql+psycopg", "postgresql+psycopg");
    let cfg = cfg.path.as_path();

    let out = ours_ok(cfg, &["migrate"]);
    assert!(out.contains(HEAD), "{out}");
    let out = ours_ok(cfg, &["admin", "create-tenant", "ours", SSH_KEY]);
    let key = created_key(&out, "ours");
    let out = ours_ok(
        cfg,
        &[
            "admin",
            "create-tenant",
            "--is-admin",
            "--node-quota",
            "3",
            "--session-lifetime",
            "90m",
            "ours-admin",
            SSH_KEY,
        ],
    );
    let admin_key = created_key(&out, "ours-admin");

    // upstream accepts our keys, and only them
    assert_eq!(
        upstream_checks_key(cfg, "ours", &key),
        "model=True bcrypt=True"
    );
    assert_eq!(
        upstream_checks_key(cfg, "ours-admin", &admin_key),
        "model=True bcrypt=True"
    );
    assert_eq!(
        upstream_checks_key(cfg, "ours", &admin_key),
        "model=False bcrypt=False"
    );
    assert_eq!(
        upstream_checks_key(cfg, "ours", &key.to_uppercase()),
        "model=False bcrypt=False"
    );

    // upstream recognises the schema and shows our tenants exactly as we do
    let out = upstream_ok(cfg, &["migration", "db-version"]);
    assert_eq!(out.trim(), format!("{HEAD} (head)"));
    for name in ["ours", "ours-admin"] {
        let up = upstream_ok(cfg, &["admin", "show-tenant", name]);
        assert!(up.starts_with(&format!("OK: {name}: id=")), "{up}");
        assert_eq!(ours_ok(cfg, &["admin", "show-tenant", name]), up);
    }
    let up = upstream_ok(cfg, &["admin", "show-tenant", "ours-admin"]);
    assert!(
        up.contains("node_quota=3 effective_node_quota=3 session_lifetime=1:30:00"),
        "{up}"
    );
    assert_eq!(
        upstream_ok(cfg, &["admin", "list-tenants"]),
        "OK: ours\nOK: ours-admin\n"
    );

    // upstream writes to our database too, and we read what it wrote
    let out = upstream_ok(cfg, &["admin", "create-tenant", "theirs", SSH_KEY]);
    let theirs = created_key(&out, "theirs");
    let hash = one(&db, "SELECT api_key FROM tenants WHERE name = 'theirs'");
    assert!(duffy::apikey::verify(&theirs, &hash));
    assert_eq!(
        ours_ok(cfg, &["admin", "show-tenant", "theirs"]),
        upstream_ok(cfg, &["admin", "show-tenant", "theirs"])
    );
    // with duffy's event bus enabled, upstream's own ORM writes nodes and sessions as before,
    // and each change is in the outbox once, as written by the database user
    let bus = shared_dir_config(cfg, "events:\n  beanstalkd:\n    address: 127.0.0.1:1\n");
    ours_ok(&bus, &["admin", "list-tenants"]);
    let o = upstream_cmd("python", cfg)
        .args(["-c", PY_WRITE_NODES])
        .arg(cfg)
        .output()
        .expect("run upstream python");
    assert_eq!(must(o, "upstream ORM writes").trim(), "ok");
    assert_eq!(
        db.rows(
            "SELECT kind || ' ' || coalesce(from_state, '-') || ' ' || coalesce(to_state, '-') || ' ' || actor \
             FROM duffy_events ORDER BY id"
        ),
        [
            "node.created - provisioning db:postgres",
            "node.transition provisioning ready db:postgres",
            "session.created - active db:postgres",
            "node.transition ready deployed db:postgres",
            "session.retired active retired db:postgres",
        ]
    );
    let o = upstream(cfg, &["setup-db"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Refusing to change database schema."),
        "{}",
        stderr(&o)
    );
}

#[test]
fn fresh_schema_equals_upstream_setup_db() {
    let ours = TestDb::empty();
    let theirs = TestDb::empty();
    let cfg_ours = shared_config(&ours.url, "postgresql", "postgresql+asyncpg");
    let cfg_theirs = shared_config(&theirs.url, "postgresql", "postgresql+asyncpg");
    ours_ok(&cfg_ours.path, &["migrate"]);
    upstream_ok(&cfg_theirs.path, &["setup-db"]);
    assert_same(
        &schema_snapshot(&theirs),
        &schema_snapshot(&ours),
        "duffy's fresh schema vs upstream setup-db",
    );
    assert_eq!(alembic(&ours), alembic(&theirs));
    // what duffy adds to upstream's tables: the outbox's triggers, plain AFTER ROW ones (no
    // constraint triggers: nothing in pg_constraint for upstream's alembic to trip over)
    assert_eq!(
        one(
            &ours,
            &format!(
                "SELECT string_agg(tgrelid::regclass || ' ' || tgname || ' ' || tgtype || ' ' || tgconstraint, ',' \
                 ORDER BY tgname) FROM pg_trigger WHERE NOT tgisinternal \
                 AND tgrelid::regclass::text IN ({UPSTREAM_TABLES})"
            )
        ),
        "nodes duffy_nodes_event 13 0,nodes duffy_nodes_state_event 17 0,\
         sessions duffy_sessions_event 13 0,sessions duffy_sessions_retired_event 17 0"
    );
}

// ---------------------------------------------------------------------------------------------
// c. older upstream revisions

/// An upstream 3.3.x database (alembic `ce2e575cb800`), per spec §1.1 with the pre-36cf064c0481
/// partial indexes (only `provisioning` excluded) and without the two indexes of 6654d536b836.
const SCHEMA_3_3: &str = r#"
CREATE TYPE node_state_enum AS ENUM
  ('unused','provisioning','ready','contextualizing','deployed','deprovisioning','done','failed');
CREATE TABLE tenants (
  id                   serial PRIMARY KEY,
  name                 text NOT NULL,
  is_admin             boolean NOT NULL DEFAULT false,
  ssh_key              text NOT NULL,
  api_key              text NOT NULL,
  node_quota           integer,
  session_lifetime     interval,
  session_lifetime_max interval,
  created_at           timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at           timestamp without time zone,
  CONSTRAINT tenants_name_key UNIQUE (name)
);
CREATE TABLE sessions (
  id         serial PRIMARY KEY,
  tenant_id  integer NOT NULL
             CONSTRAINT sessions_tenant_id_tenants_fkey REFERENCES tenants(id),
  expires_at timestamp without time zone,
  data       json NOT NULL DEFAULT '{}'::json,
  created_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at timestamp without time zone
);
CREATE TABLE nodes (
  id         serial PRIMARY KEY,
  hostname   text,
  ipaddr     text,
  state      node_state_enum NOT NULL DEFAULT 'unused',
  comment    text,
  pool       text,
  reusable   boolean NOT NULL DEFAULT false,
  data       json NOT NULL DEFAULT '{}'::json,
  created_at timestamp without time zone NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
  retired_at timestamp without time zone
);
CREATE UNIQUE INDEX active_hostname_index ON nodes (hostname)
  WHERE retired_at IS NULL AND state <> 'provisioning';
CREATE UNIQUE INDEX active_ipaddr_index ON nodes (ipaddr)
  WHERE retired_at IS NULL AND state <> 'provisioning';
CREATE INDEX nodes_pool_index ON nodes (pool);
CREATE TABLE sessions_nodes (
  session_id integer NOT NULL
             CONSTRAINT sessions_nodes_session_id_sessions_fkey REFERENCES sessions(id),
  node_id    integer NOT NULL
             CONSTRAINT sessions_nodes_node_id_nodes_fkey REFERENCES nodes(id),
  pool       text NOT NULL,
  data       json NOT NULL DEFAULT '{}'::json,
  CONSTRAINT sessions_nodes_pkey PRIMARY KEY (session_id, node_id)
);
CREATE INDEX sessions_nodes_pool_index ON sessions_nodes (pool);
CREATE TABLE alembic_version (
  version_num varchar(32) NOT NULL,
  CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version VALUES ('ce2e575cb800');
"#;

fn indexdef(db: &TestDb, name: &str) -> String {
    one(
        db,
        &format!(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexname = '{name}'"
        ),
    )
}

#[test]
fn upgrades_upstream_3_3_database_from_spec_ddl() {
    let db = TestDb::empty();
    db.exec(SCHEMA_3_3);
    db.exec(TENANTS_SQL);
    db.exec(&rows_sql_old_indexes());
    let cfg = shared_config(&db.url, "postgresql", "postgresql+asyncpg");
    let cfg = cfg.path.as_path();
    assert!(!indexdef(&db, "active_hostname_index").contains("failed"));
    assert_eq!(indexdef(&db, "nodes_state_index"), "");
    let before = data_snapshot(&db);

    let out = ours_ok(cfg, &["migrate"]);
    assert!(out.contains("ce2e575cb800"), "{out}");
    assert!(out.contains("36cf064c0481"), "{out}");
    assert!(out.contains(HEAD), "{out}");
    assert_eq!(alembic(&db), format!("[{{\"version_num\":\"{HEAD}\"}}]"));
    assert_same(&before, &data_snapshot(&db), "rows after the upgrade");
    for ix in ["active_hostname_index", "active_ipaddr_index"] {
        let def = indexdef(&db, ix);
        assert!(def.starts_with("CREATE UNIQUE INDEX"), "{def}");
        assert!(
            def.contains("(state <> 'provisioning'::node_state_enum)")
                && def.contains("(state <> 'failed'::node_state_enum)")
                && def.contains("(retired_at IS NULL)"),
            "{def}"
        );
    }
    assert_eq!(
        indexdef(&db, "nodes_state_index"),
        "CREATE INDEX nodes_state_index ON public.nodes USING btree (state)"
    );
    assert_eq!(
        indexdef(&db, "sessions_nodes_session_id_index"),
        "CREATE INDEX sessions_nodes_session_id_index ON public.sessions_nodes USING btree (session_id)"
    );
    // the schema is now exactly the head schema
    let head = TestDb::empty();
    head.exec(include_str!("../src/db/sql/upstream_head.sql"));
    assert_same(
        &schema_snapshot(&head),
        &schema_snapshot(&db),
        "upgraded 3.3 schema vs head",
    );
    // upstream agrees it is at head, and both sides read the old rows alike
    let out = upstream_ok(cfg, &["migration", "db-version"]);
    assert_eq!(out.trim(), format!("{HEAD} (head)"));
    let up = upstream_ok(cfg, &["admin", "show-tenant", "tenant1"]);
    assert!(
        up.contains("node_quota=4 effective_node_quota=4 session_lifetime=2:00:00"),
        "{up}"
    );
    assert_eq!(ours_ok(cfg, &["admin", "show-tenant", "tenant1"]), up);
    let hash = one(&db, "SELECT api_key FROM tenants WHERE name = 'tenant1'");
    assert!(duffy::apikey::verify(TENANTS_SQL_KEY, &hash));

    let before = full_snapshot(&db);
    let out = ours_ok(cfg, &["migrate"]);
    assert!(out.contains("Nothing to upgrade."), "{out}");
    assert_same(&before, &full_snapshot(&db), "second migrate");

    // the relaxed index is in force: a failed node may now share a live node's name
    db.exec(
        "INSERT INTO nodes (hostname, ipaddr, state) VALUES ('n1.ci.test', '127.0.1.1', 'failed')",
    );
}

/// A database made by upstream itself at an older revision (`setup-db` then
/// `migration downgrade REV`), with rows.
fn upstream_db_at(rev: &str) -> (TestDb, SharedConfig) {
    let db = TestDb::empty();
    let cfg = shared_config(&db.url, "postgresql", "postgresql+asyncpg");
    upstream_ok(&cfg.path, &["setup-db"]);
    let out = upstream_ok(&cfg.path, &["migration", "downgrade", rev]);
    assert!(out.contains(&format!("Downgraded to: {rev}")), "{out}");
    db.exec(TENANTS_SQL);
    db.exec(&rows_sql_old_indexes());
    (db, cfg)
}

#[test]
fn upgrades_older_upstream_revisions_exactly_as_upstream_does() {
    for rev in ["ce2e575cb800", "36cf064c0481"] {
        let (mine, cfg_mine) = upstream_db_at(rev);
        let (theirs, cfg_theirs) = upstream_db_at(rev);
        let before = data_snapshot(&mine);

        let out = ours_ok(&cfg_mine.path, &["migrate"]);
        assert!(out.contains(rev) && out.contains(HEAD), "{out}");
        let out = upstream_ok(&cfg_theirs.path, &["migration", "upgrade"]);
        assert!(out.contains(&format!("Upgraded to: {HEAD}")), "{out}");

        assert_same(
            &schema_snapshot(&theirs),
            &schema_snapshot(&mine),
            &format!("from {rev}: duffy migrate vs upstream migration upgrade"),
        );
        assert_eq!(alembic(&mine), alembic(&theirs));
        // rows: unchanged, by us as by upstream
        assert_same(&before, &data_snapshot(&mine), "rows after the upgrade");
        assert_same(
            &before,
            &data_snapshot(&theirs),
            "rows after upstream's upgrade",
        );
        let out = upstream_ok(&cfg_mine.path, &["migration", "db-version"]);
        assert_eq!(out.trim(), format!("{HEAD} (head)"));
    }
}

// ---------------------------------------------------------------------------------------------
// d. refusals that change nothing

fn assert_refused(db: &TestDb, cfg: &Path, needle: &str) {
    let before = full_snapshot(db);
    let o = duffy(Some(cfg), &["migrate"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    let err = stderr(&o);
    assert!(err.contains(needle), "message names {needle:?}: {err}");
    assert!(
        err.lines().count() <= 3,
        "a short message, not a dump: {err}"
    );
    assert_same(&before, &full_snapshot(db), "refused migrate");
    assert_untouched_by_duffy(db);
}

#[test]
fn refuses_unknown_upstream_revision_and_changes_nothing() {
    let db = TestDb::empty();
    let cfg = shared_config(&db.url, "postgresql", "postgresql+asyncpg");
    upstream_ok(&cfg.path, &["setup-db"]);
    create_upstream_tenants(&cfg.path);
    db.exec(ROWS_SQL);
    db.exec("UPDATE alembic_version SET version_num = 'deadbeef0000'");
    assert_refused(&db, &cfg.path, "deadbeef0000");
    let o = duffy(Some(&cfg.path), &["migrate"]);
    assert!(
        stderr(&o).contains("unknown upstream Duffy revision"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn refuses_upstream_tables_without_alembic_version() {
    let db = TestDb::empty();
    let cfg = shared_config(&db.url, "postgresql", "postgresql+asyncpg");
    upstream_ok(&cfg.path, &["setup-db"]);
    create_upstream_tenants(&cfg.path);
    db.exec(ROWS_SQL);
    // an empty alembic_version…
    db.exec("DELETE FROM alembic_version");
    assert_refused(&db, &cfg.path, "alembic_version");
    // …and none at all
    db.exec("DROP TABLE alembic_version");
    assert_refused(&db, &cfg.path, "alembic_version");
}

/// Issue 13: adopting an upstream database is `duffy migrate`'s job alone. Before it, every
/// other command (`serve`, which used to adopt it on start, the scheduler, `admin`, `stats`)
/// refuses the database with one line naming it and `duffy migrate`, and leaves it exactly as
/// upstream made it — at the head revision as at an older one.
#[test]
fn other_commands_refuse_an_upstream_database_until_duffy_migrate_adopts_it() {
    let head = TestDb::empty();
    let cfg_head = shared_config(&head.url, "postgresql", "postgresql+asyncpg");
    upstream_ok(&cfg_head.path, &["setup-db"]);
    create_upstream_tenants(&cfg_head.path);
    head.exec(ROWS_SQL);
    let (older, cfg_older) = upstream_db_at("36cf064c0481");
    for (db, cfg) in [(&head, &cfg_head.path), (&older, &cfg_older.path)] {
        let before = full_snapshot(db);
        let port = free_port().to_string();
        for args in [
            &["serve", "-p", &port][..],
            &["scheduler", "--once"][..],
            &["admin", "list-tenants"][..],
            &["stats"][..],
        ] {
            let o = output_within(
                duffy_cmd(Some(cfg), args),
                std::time::Duration::from_secs(30),
            );
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.contains(&db.name) && err.contains("run `duffy migrate`"),
                "{args:?}: {err}"
            );
        }
        assert_same(&before, &full_snapshot(db), "after the refused commands");
        assert_untouched_by_duffy(db);
        // adopted by `duffy migrate`, the database serves every command
        ours_ok(cfg, &["migrate"]);
        let out = ours_ok(cfg, &["admin", "list-tenants"]);
        assert!(out.contains("OK: tenant1"), "{out}");
        ours_ok(cfg, &["stats"]);
    }
}
