//! `duffy admin` end to end: run the binary against a throw-away database, parse its output.
mod common;

use common::*;

#[test]
fn create_tenant_prints_key_and_stores_bcrypt_hash() {
    let tdb = TestDb::empty();
    let cfg = TestConfig::new(&tdb.url, "");
    let o = duffy(Some(&cfg.path), &["migrate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = duffy(
        Some(&cfg.path),
        &["admin", "create-tenant", "demo", SSH_KEY],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let key = out.trim().strip_prefix("OK: demo: ").expect(&out);
    let key = uuid::Uuid::parse_str(key).expect("api key is a UUID");
    assert_eq!(key.get_version_num(), 4);
    let rows = tdb.query_strings("SELECT api_key FROM tenants WHERE name = 'demo'");
    let hash = rows[0].clone().unwrap();
    assert!(hash.starts_with("$2b$12$"), "{hash}");
    assert!(duffy::apikey::verify(&key.to_string(), &hash));
    assert!(!hash.contains(&key.to_string()));
    let row = tdb.query_strings(
        "SELECT concat_ws('|', ssh_key, is_admin, coalesce(node_quota::text, 'NULL'), coalesce(session_lifetime::text, 'NULL'), (retired_at IS NULL)) FROM tenants WHERE name = 'demo'",
    );
    assert_eq!(
        row[0].as_deref().unwrap(),
        format!("{SSH_KEY}|f|NULL|NULL|t")
    );

    // a second create of the same name fails, clearly, and writes nothing
    let o = duffy(
        Some(&cfg.path),
        &["admin", "create-tenant", "demo", SSH_KEY],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("ERROR: demo"), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(
        tdb.query_strings("SELECT count(*) FROM tenants")[0].as_deref(),
        Some("1")
    );
}

#[test]
fn bad_ssh_key_is_refused_and_nothing_written() {
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, "");
    let o = duffy(
        Some(&cfg.path),
        &["admin", "create-tenant", "bad", "ssh-rsa AAAAnot-a-key"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("ssh_key: line 1"), "{err}");
    assert_eq!(
        tdb.query_strings("SELECT count(*) FROM tenants")[0].as_deref(),
        Some("0")
    );
    let o = duffy(
        Some(&cfg.path),
        &[
            "admin",
            "create-tenant",
            "--node-quota",
            "0",
            "bad",
            SSH_KEY,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--node-quota"));
}

#[test]
fn show_update_retire_reset_list() {
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, "");
    let c = Some(cfg.path.as_path());
    let two_keys = format!("{SSH_KEY}\n{SSH_KEY} second");
    let o = duffy(
        c,
        &[
            "admin",
            "create-tenant",
            "--node-quota",
            "3",
            "--session-lifetime",
            "1h30m",
            "alpha",
            &two_keys,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = duffy(
        c,
        &["admin", "create-tenant", "--is-admin", "admin", SSH_KEY],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let o = duffy(c, &["admin", "show-tenant", "alpha"]);
    let out = stdout(&o);
    assert!(
        out.starts_with("OK: alpha: id=1 node_quota=3 effective_node_quota=3 session_lifetime=1:30:00 effective_session_lifetime=1:30:00 session_lifetime_max=None effective_session_lifetime_max=12:00:00 active=True created_at="),
        "{out}"
    );
    assert!(out.trim_end().ends_with("retired_at=None"), "{out}");

    let o = duffy(c, &["admin", "show-tenant", "nobody"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "ERROR: nobody\nERROR DETAIL: Not Found\n");

    let o = duffy(
        c,
        &[
            "admin",
            "update-tenant",
            "--node-quota",
            "none",
            "--session-lifetime-max",
            "2d",
            "alpha",
        ],
    );
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        out.trim(),
        "OK: alpha: ssh_key=********** api_key=********** node_quota=None effective_node_quota=10 session_lifetime=1:30:00 effective_session_lifetime=1:30:00 session_lifetime_max=2 days, 0:00:00 effective_session_lifetime_max=2 days, 0:00:00"
    );

    let o = duffy(c, &["admin", "update-tenant", "alpha"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("Either --ssh-key, --api-key"),
        "{}",
        stderr(&o)
    );

    // reset prints a new key once; the old one stops working
    let old = tdb.query_strings("SELECT api_key FROM tenants WHERE name='alpha'")[0]
        .clone()
        .unwrap();
    let o = duffy(c, &["admin", "reset-api-key", "alpha"]);
    let key = stdout(&o)
        .trim()
        .strip_prefix("OK: alpha: ")
        .unwrap()
        .to_string();
    let new = tdb.query_strings("SELECT api_key FROM tenants WHERE name='alpha'")[0]
        .clone()
        .unwrap();
    assert_ne!(old, new);
    assert!(duffy::apikey::verify(&key, &new));

    // set a known (legacy) key; it is never echoed
    let legacy = "8E06B6E1-FB32-4348-9342-9509E7507A1E";
    let o = duffy(c, &["admin", "update-tenant", "--api-key", legacy, "alpha"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).to_lowercase().contains(&legacy.to_lowercase()));
    let h = tdb.query_strings("SELECT api_key FROM tenants WHERE name='alpha'")[0]
        .clone()
        .unwrap();
    assert!(duffy::apikey::verify(&legacy.to_lowercase(), &h));

    // retire: the tenant's active sessions expire now; list hides it unless --all
    tdb.exec("INSERT INTO sessions (tenant_id, expires_at) VALUES (1, now() + interval '5 hours')");
    let o = duffy(c, &["admin", "retire-tenant", "alpha"]);
    assert_eq!(stdout(&o).trim(), "OK: alpha: active=False");
    let expired = tdb.query_strings("SELECT expires_at <= now() AT TIME ZONE 'utc' FROM sessions");
    assert_eq!(expired[0].as_deref(), Some("t"));
    let o = duffy(c, &["admin", "list-tenants"]);
    assert_eq!(stdout(&o), "OK: admin\n");
    let o = duffy(c, &["admin", "list-tenants", "--all", "--quiet"]);
    assert_eq!(stdout(&o), "admin\nalpha\n");
    let o = duffy(c, &["admin", "update-tenant", "--node-quota", "5", "alpha"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("tenant alpha (id=1) is retired"),
        "{}",
        stderr(&o)
    );
    let o = duffy(c, &["admin", "unretire-tenant", "alpha"]);
    assert_eq!(stdout(&o).trim(), "OK: alpha: active=True");
    let o = duffy(c, &["admin", "retire-tenant", "--unretire", "alpha"]);
    assert_eq!(stdout(&o).trim(), "OK: alpha: active=True");

    // every change left an audit row, and no audit row holds a key
    let actions = tdb.query_strings("SELECT string_agg(action, ',' ORDER BY id) FROM duffy_audit_log WHERE entity='tenant' AND entity_id=1");
    assert_eq!(
        actions[0].as_deref(),
        Some("create,update,update,update,retire,unretire")
    );
    let leaked = tdb.query_strings(&format!(
        "SELECT count(*) FROM duffy_audit_log WHERE detail::text ILIKE '%{}%'",
        &key[..8]
    ));
    assert_eq!(leaked[0].as_deref(), Some("0"));
}

#[test]
fn machine_formats() {
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, "");
    let c = Some(cfg.path.as_path());
    let o = duffy(
        c,
        &["admin", "--format", "json", "create-tenant", "fmt", SSH_KEY],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["action"], "post");
    assert_eq!(v["tenant"]["name"], "fmt");
    assert_eq!(v["tenant"]["ssh_key"], SSH_KEY);
    assert_eq!(v["tenant"]["effective_session_lifetime"], 21600.0);
    let key = v["tenant"]["api_key"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(key).is_ok());
    let keys: Vec<&String> = v["tenant"].as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "retired_at",
            "active",
            "created_at",
            "name",
            "is_admin",
            "ssh_key",
            "node_quota",
            "session_lifetime",
            "session_lifetime_max",
            "id",
            "effective_node_quota",
            "effective_session_lifetime",
            "effective_session_lifetime_max",
            "api_key"
        ]
    );
    let o = duffy(c, &["admin", "show-tenant", "fmt", "--format", "yaml"]);
    let y: serde_yaml::Value = serde_yaml::from_str(&stdout(&o)).expect("yaml");
    assert_eq!(y["tenant"]["ssh_key"].as_str(), Some("**********"));
    let o = duffy(c, &["admin", "show-tenant", "fmt", "--format", "flat"]);
    let out = stdout(&o);
    assert!(
        out.contains("name='fmt'") && out.contains("active=TRUE") && out.contains("retired_at= "),
        "{out}"
    );
}

/// Seed SOP "Retiring a node pool": `duffy admin remove-pool` replaces remove-pool.sh, in one
/// transaction, refusing while the pool is configured or in use, keeping spare hardware.
#[test]
fn remove_pool_deletes_history_in_one_transaction() {
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, &pools_yaml(&[("keep", 1)]));
    let c = Some(cfg.path.as_path());
    create_tenant(&cfg.path, "t", &[]);
    tdb.exec(
        "INSERT INTO nodes (id, hostname, ipaddr, state, pool, reusable, retired_at) VALUES
           (1, 'a1', '127.3.0.1', 'ready', 'old', false, NULL),
           (2, 'a2', '127.3.0.2', 'done', NULL, false, now()),
           (3, 'spare', '127.3.0.3', 'unused', NULL, true, NULL),
           (4, 'k1', '127.3.0.4', 'deployed', 'keep', false, NULL);
         SELECT setval('nodes_id_seq', 10);
         INSERT INTO sessions (id, tenant_id, expires_at, data, retired_at) VALUES
           (1, 1, now(), '{\"nodes_specs\": [{\"quantity\": 1, \"pool\": \"old\"}]}', now()),
           (2, 1, now(), '{\"nodes_specs\": [{\"quantity\": 1, \"pool\": \"old\"}]}', now()),
           (3, 1, now() + interval '1 hour', '{\"nodes_specs\": [{\"quantity\": 1, \"pool\": \"keep\"}]}', NULL);
         INSERT INTO sessions_nodes (session_id, node_id, pool) VALUES (1, 2, 'old'), (2, 3, 'old'), (3, 4, 'keep');",
    );
    let snapshot = || {
        tdb.query_strings(
            "SELECT (SELECT string_agg(id::text, ',' ORDER BY id) FROM nodes) || ' / ' ||
                    (SELECT string_agg(id::text, ',' ORDER BY id) FROM sessions) || ' / ' ||
                    (SELECT count(*) FROM sessions_nodes)",
        )[0]
        .clone()
        .unwrap()
    };
    let before = snapshot();
    assert_eq!(before, "1,2,3,4 / 1,2,3 / 3");

    // still configured → refused
    let o = duffy(c, &["admin", "remove-pool", "keep"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("still configured"), "{}", stderr(&o));
    // in use by an active session → refused even with --force, nothing changed
    let o = duffy(c, &["admin", "remove-pool", "--force", "keep"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("active sessions still hold nodes of this pool: 3"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(), before);

    let o = duffy(c, &["admin", "remove-pool", "--dry-run", "old"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "OK: old: would remove 2 session links, 2 sessions, 2 nodes (dry run, nothing changed)"
    );
    assert_eq!(snapshot(), before);

    let o = duffy(c, &["admin", "remove-pool", "old"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        "OK: old: removed 2 session links, 2 sessions, 2 nodes"
    );
    // the ready and the done node of the pool are gone; the spare reusable node and the other
    // pool's data stay
    assert_eq!(snapshot(), "3,4 / 3 / 1");
    let audit =
        tdb.query_strings("SELECT detail->>'pool' FROM duffy_audit_log WHERE entity = 'pool'");
    assert_eq!(audit[0].as_deref(), Some("old"));
}

/// Issue 12: a private key pasted by mistake where an SSH public key belongs is refused with a
/// message naming the argument, and no line of the key ever appears in the output (clap used to
/// print the whole key twice in its "unexpected argument" error).
#[test]
fn private_key_given_as_ssh_key_is_never_echoed() {
    let tdb = TestDb::migrated();
    let cfg = TestConfig::new(&tdb.url, "");
    create_tenant(&cfg.path, "demo", &[]);
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ed25519", "rsa"] {
        let file = dir.path().join(format!("id_{kind}"));
        let o = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "pasted@by-mistake", "-f"])
            .arg(&file)
            .output()
            .expect("run ssh-keygen");
        assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
        let private = std::fs::read_to_string(&file).unwrap();
        let body: Vec<&str> = private
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .collect();
        assert!(body.len() > 2, "{kind}: {private}");
        let key = private.as_str();
        let with_stdin = |args: &[&str], input: Option<&str>| {
            let mut cmd = duffy_cmd(Some(&cfg.path), args);
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().expect("run duffy");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
            }
            child.wait_with_output().unwrap()
        };
        let inline = format!("--ssh-key={key}");
        let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
            (vec!["admin", "create-tenant", "t1", key], None),
            (vec!["admin", "create-tenant", "t1", key.trim()], None),
            (vec!["admin", "create-tenant", "t1", "--", key], None),
            (
                vec!["admin", "create-tenant", "--is-admin", "t1", key],
                None,
            ),
            (vec!["admin", "create-tenant", "t1", "-"], Some(key)),
            (vec!["admin", "create-tenant", key], None),
            (vec!["admin", "create-tenant", key, "t1"], None),
            (
                vec!["admin", "update-tenant", "--ssh-key", key, "demo"],
                None,
            ),
            (vec!["admin", "update-tenant", &inline, "demo"], None),
            (
                vec!["admin", "update-tenant", "--ssh-key", "-", "demo"],
                Some(key),
            ),
        ];
        for (args, input) in cases {
            let shown: Vec<String> = args
                .iter()
                .map(|a| {
                    if a.contains("PRIVATE") {
                        "<private key>".into()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let o = with_stdin(&args, input);
            let (out, err) = (stdout(&o), stderr(&o));
            assert!(
                !o.status.success(),
                "{kind} {shown:?}: accepted\n{out}{err}"
            );
            for line in &body {
                if out.contains(line) || err.contains(line) {
                    let redacted = body.iter().fold(format!("{out}{err}"), |t, l| {
                        t.replace(l, "<line of the private key>")
                    });
                    panic!("{kind} {shown:?}: the private key was printed:\n{redacted}");
                }
            }
            assert!(
                err.to_lowercase().contains("ssh key")
                    || err.contains("ssh_key")
                    || err.contains("SSH_KEY"),
                "{kind} {shown:?}: the argument is not named: {err}"
            );
            assert!(
                err.contains("private key"),
                "{kind} {shown:?}: does not say what is wrong: {err}"
            );
            assert!(err.trim().lines().count() <= 2, "{kind} {shown:?}: {err}");
        }
    }
    // nothing was written: demo keeps its key, no t1
    assert_eq!(
        tdb.query_strings("SELECT string_agg(name || '=' || ssh_key, ',') FROM tenants")[0]
            .as_deref(),
        Some(format!("demo={SSH_KEY}").as_str())
    );
}

/// Issue 13: only `duffy migrate` creates a database or schema. Every other command that uses
/// the database — `serve` (which used to create and migrate it), `serve-legacy`, `admin`,
/// `stats` — refuses a database that does not exist, one without duffy's schema and one with
/// pending duffy migrations: one line naming the database and `duffy migrate`, exit 1, nothing
/// created or written.
#[test]
fn commands_refuse_a_missing_or_unmigrated_database() {
    let admin = TestDb::migrated();
    let count_dbs = |name: &str| {
        admin.one(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
    };
    let check = |db_url: &str, name: &str| {
        let cfg = TestConfig::new(db_url, "metaclient:\n  usermap: {}\n  poolmap: []\n");
        let port = free_port().to_string();
        let lport = free_port().to_string();
        for args in [
            &["serve", "-p", &port, "--legacy-port", &lport][..],
            &["serve-legacy", "-p", &lport][..],
            &["admin", "list-tenants"][..],
            &["admin", "create-tenant", "t", SSH_KEY][..],
            &["stats"][..],
        ] {
            let o = output_within(
                duffy_cmd(Some(&cfg.path), args),
                std::time::Duration::from_secs(30),
            );
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.contains(name) && err.contains("run `duffy migrate`"),
                "{args:?}: {err}"
            );
        }
    };
    // a typo in the database name: nothing creates it
    let typo = TestDb {
        name: format!("{}_typo", admin.name),
        url: admin
            .url
            .replace(&admin.name, &format!("{}_typo", admin.name)),
    };
    check(&typo.url, &typo.name);
    assert_eq!(count_dbs(&typo.name), "0");
    // a database without any schema: nothing creates one
    let empty = TestDb::empty();
    check(&empty.url, &empty.name);
    assert_eq!(
        empty.one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"),
        "0"
    );
    // pending duffy migrations: refused, not applied
    let old = TestDb::migrated();
    let latest = old.one("SELECT max(version) FROM duffy_schema_migrations");
    old.exec(&format!(
        "DELETE FROM duffy_schema_migrations WHERE version = {latest}"
    ));
    check(&old.url, &old.name);
    assert_eq!(
        old.one("SELECT count(*) FROM duffy_schema_migrations"),
        (latest.parse::<i32>().unwrap() - 1).to_string()
    );
    assert_eq!(old.one("SELECT count(*) FROM tenants"), "0");
}
