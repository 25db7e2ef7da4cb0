//! The dynamic inventory end to end: fixture data in a throw-away PostgreSQL database, the real
//! `duffy-inventory` binary (its JSON asserted), and a real ansible-core (installed from PyPI by
//! `.ci/ansible-venv.sh` when missing) reading `inventory/duffy.sh`: `ansible-inventory --list`
//! / `--graph` and `ansible --list-hosts` must agree with the binary.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

const P1: &str = "metal-ec2-c5n-centos-10s-x86_64";
const P2: &str = "virt-ec2-c6g-centos-9s-aarch64";
const P3: &str = "physical-centos9stream-x86_64";
const KEY2: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 samba@CI";

/// Pools P1..P3 (P3 carries `architecture` in its config) and an empty one.
fn pools() -> String {
    let mech = "mechanism: {type: ansible, ansible: {provision: {playbook: p.yml}}}";
    format!(
        "nodepools:\n  concrete:\n    {P1}: {{fill-level: 2, {mech}}}\n    {P2}: {{fill-level: 2, {mech}}}\n    \
         {P3}: {{fill-level: 1, architecture: x86_64, {mech}}}\n    empty-pool: {{fill-level: 1, {mech}}}\n"
    )
}

/// Tenants, sessions and nodes covering every case the inventory distinguishes.
fn fixture(db: &TestDb) {
    db.exec(&format!(
        "INSERT INTO tenants (id, name, is_admin, ssh_key, api_key, retired_at) VALUES
           (1, 'samba', false, '{SSH_KEY}\n# rotated 2024\n\n{KEY2}\n', 'x', NULL),
           (2, 'ci.user-x', false, '{SSH_KEY}', 'x', NULL),
           (3, 'admin', true, '{SSH_KEY}', 'x', NULL),
           (4, 'oldie', false, '{SSH_KEY}', 'x', '2024-01-01 00:00:00'),
           (5, 't{{{{x}}}}', false, '{SSH_KEY}', 'x', NULL);
         INSERT INTO sessions (id, tenant_id, expires_at, data, retired_at) VALUES
           (1, 1, '2024-01-01 06:00:00', '{{}}', '2024-01-01 01:00:00'),
           (2, 1, '2030-01-01 00:00:00', '{{}}', NULL),
           (3, 2, '2030-01-01 06:30:00.25', '{{}}', NULL);
         INSERT INTO nodes (id, hostname, ipaddr, state, pool, reusable, comment, data, retired_at) VALUES
           (1, 'n1.ci.example.org', '10.1.0.1', 'ready', '{P1}', false, NULL, '{{}}', NULL),
           (2, 'n2.ci.example.org', '10.1.0.2', 'ready', '{P1}', false, NULL, '{{}}', NULL),
           (3, 'n3.ci.example.org', '10.1.0.3', 'deployed', '{P2}', false, NULL, '{{}}', NULL),
           (4, 'n4.ci.example.org', '10.1.0.4', 'deployed', '{P2}', false, NULL, '{{}}', NULL),
           (5, 'n5.ci.example.org', '10.1.0.5', 'deployed', '{P1}', false, 'rack 3',
              '{{\"note\": \"{{{{ 40 + 2 }}}}\", \"bmc\": {{\"address\": \"10.9.0.5\", \"password\": \"hunter2\", \"credential\": \"rack3\"}}, \"api_token\": \"tok\"}}', NULL),
           (7, 'n1.ci.example.org', '10.1.0.7', 'failed', '{P1}', false, NULL,
              '{{\"error\": {{\"detail\": \"boom\"}}}}', NULL),
           (8, 'n8.ci.example.org', '10.1.0.8', 'done', NULL, false, NULL, '{{}}', '2024-02-01 00:00:00'),
           (9, 'metal9.example.org', '10.2.0.9', 'unused', NULL, true, NULL,
              '{{\"architecture\": \"ppc64le\", \"ipmi_password\": \"pw\", \"bmc\": {{\"credential\": \"rack3\"}}}}', NULL),
           (10, NULL, NULL, 'provisioning', '{P2}', false, NULL, '{{}}', NULL),
           (11, 'n11.ci.example.org', '10.1.0.11', 'deprovisioning', NULL, false, NULL, '{{}}', NULL),
           (12, 'p3-1.example.org', '10.3.0.1', 'ready', '{P3}', true, NULL, '{{}}', NULL),
           (13, NULL, '10.3.0.2', 'ready', '{P3}', true, NULL, '{{}}', NULL);
         INSERT INTO sessions_nodes (session_id, node_id, pool) VALUES
           (1, 11, '{P1}'), (2, 3, '{P2}'), (2, 4, '{P2}'), (3, 5, '{P1}');"
    ));
}

struct Env {
    _db: TestDb,
    cfg: TestConfig,
}

fn setup(extra: &str) -> Env {
    let db = TestDb::migrated();
    fixture(&db);
    let cfg = TestConfig::new(&db.url, &format!("{}{extra}", pools()));
    Env { _db: db, cfg }
}

fn empty_home() -> PathBuf {
    std::env::temp_dir().join("duffy-test-empty-home")
}

/// The binary as Ansible runs it: no `-c`, the config from `$DUFFY_CONFIG`, nothing else leaking.
fn inventory_cmd(config: Option<&Path>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duffy-inventory"));
    cmd.env_remove("DUFFY_CONFIG")
        .env_remove("DUFFY_DATABASE_URL")
        .env_remove("DUFFY_INVENTORY_BIN")
        .env("HOME", empty_home())
        .env("XDG_CONFIG_HOME", empty_home().join(".config"));
    if let Some(c) = config {
        cmd.env("DUFFY_CONFIG", c);
    }
    cmd
}

fn run_json(mut cmd: impl std::borrow::BorrowMut<Command>) -> Value {
    let cmd = cmd.borrow_mut();
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{:?}: {}", cmd, stderr(&o));
    assert_eq!(
        stderr(&o),
        "",
        "stderr must stay empty (Ansible shows it as an error)"
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

fn list(config: &Path) -> Value {
    run_json(inventory_cmd(Some(config)).arg("--list"))
}

/// group → hosts (groups with vars only are listed too)
fn groups(doc: &Value) -> BTreeMap<String, Vec<String>> {
    doc.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "_meta")
        .map(|(k, g)| {
            let hosts = g["hosts"].as_array().unwrap_or_else(|| panic!("{k}: {g}"));
            (
                k.clone(),
                hosts
                    .iter()
                    .map(|h| h.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn expected_groups() -> BTreeMap<String, Vec<String>> {
    let g = |name: &str, hosts: &[&str]| {
        (
            name.to_string(),
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
    };
    BTreeMap::from([
        g(
            "duffy_all",
            &[
                "10.3.0.2",
                "metal9.example.org",
                "n1.ci.example.org",
                "n1.ci.example.org~7",
                "n11.ci.example.org",
                "n2.ci.example.org",
                "n3.ci.example.org",
                "n4.ci.example.org",
                "n5.ci.example.org",
                "p3-1.example.org",
            ],
        ),
        g(
            "pool_metal_ec2_c5n_centos_10s_x86_64",
            &[
                "n1.ci.example.org",
                "n1.ci.example.org~7",
                "n2.ci.example.org",
                "n5.ci.example.org",
            ],
        ),
        g(
            "pool_virt_ec2_c6g_centos_9s_aarch64",
            &["n3.ci.example.org", "n4.ci.example.org"],
        ),
        g(
            "pool_physical_centos9stream_x86_64",
            &["10.3.0.2", "p3-1.example.org"],
        ),
        g("pool_empty_pool", &[]),
        g("state_unused", &["metal9.example.org"]),
        g("state_provisioning", &[]),
        g(
            "state_ready",
            &[
                "10.3.0.2",
                "n1.ci.example.org",
                "n2.ci.example.org",
                "p3-1.example.org",
            ],
        ),
        g("state_contextualizing", &[]),
        g(
            "state_deployed",
            &[
                "n3.ci.example.org",
                "n4.ci.example.org",
                "n5.ci.example.org",
            ],
        ),
        g("state_deprovisioning", &["n11.ci.example.org"]),
        g("state_failed", &["n1.ci.example.org~7"]),
        g("tenant_samba", &["n3.ci.example.org", "n4.ci.example.org"]),
        g("tenant_ci_user_x", &["n5.ci.example.org"]),
        g("session_2", &["n3.ci.example.org", "n4.ci.example.org"]),
        g("session_3", &["n5.ci.example.org"]),
        g(
            "arch_x86_64",
            &[
                "10.3.0.2",
                "n1.ci.example.org",
                "n1.ci.example.org~7",
                "n2.ci.example.org",
                "n5.ci.example.org",
                "p3-1.example.org",
            ],
        ),
        g("arch_aarch64", &["n3.ci.example.org", "n4.ci.example.org"]),
        g("arch_ppc64le", &["metal9.example.org"]),
        g(
            "release_centos_10s",
            &[
                "n1.ci.example.org",
                "n1.ci.example.org~7",
                "n2.ci.example.org",
                "n5.ci.example.org",
            ],
        ),
        g(
            "release_centos_9s",
            &["n3.ci.example.org", "n4.ci.example.org"],
        ),
    ])
}

#[test]
fn list_groups_hostvars_and_exclusions() {
    let env = setup("");
    let doc = list(&env.cfg.path);
    assert_eq!(groups(&doc), expected_groups());
    // deterministic: groups in name order, `_meta` last; the same bytes every time
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    let mut sorted = keys[..keys.len() - 1].to_vec();
    sorted.sort();
    assert_eq!(keys[..keys.len() - 1], sorted[..]);
    assert_eq!(keys.last().unwrap().as_str(), "_meta");
    let run = || {
        inventory_cmd(Some(&env.cfg.path))
            .arg("--list")
            .output()
            .unwrap()
            .stdout
    };
    let first = run();
    assert_eq!(first, run());
    assert_eq!(doc, serde_json::from_slice::<Value>(&first).unwrap());

    let hv = &doc["_meta"]["hostvars"];
    let names: BTreeSet<&str> = hv.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        names,
        expected_groups()["duffy_all"]
            .iter()
            .map(String::as_str)
            .collect()
    );
    // done/retired (8) and address-less (10) nodes are not listed
    assert!(!doc.to_string().contains("n8.ci.example.org"));
    assert_eq!(
        hv["n5.ci.example.org"],
        json!({
            "ansible_host": "10.1.0.5", "duffy_node_id": 5, "duffy_hostname": "n5.ci.example.org",
            "duffy_pool": P1, "duffy_state": "deployed", "duffy_reusable": false,
            "duffy_comment": "rack 3", "duffy_session_id": 3, "duffy_tenant": "ci.user-x",
            "duffy_expires_at": "2030-01-01T06:30:00.250000Z",
            "duffy_arch": "x86_64", "duffy_release": "centos-10s",
            "duffy_data": {"note": {"__ansible_unsafe": "{{ 40 + 2 }}"},
                           "bmc": {"address": "10.9.0.5", "credential": "rack3"}}
        })
    );
    // secrets never leave the database
    let text = doc.to_string();
    for secret in ["hunter2", "tok", "ipmi_password", "\"pw\""] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    // a reusable unused node: arch from its data; the failed twin: suffixed, no session
    assert_eq!(hv["metal9.example.org"]["duffy_arch"], "ppc64le");
    assert_eq!(hv["metal9.example.org"]["duffy_pool"], Value::Null);
    assert_eq!(
        hv["metal9.example.org"]["duffy_data"],
        json!({"architecture": "ppc64le", "bmc": {"credential": "rack3"}})
    );
    assert_eq!(hv["n1.ci.example.org"]["duffy_node_id"], 1);
    assert_eq!(hv["n1.ci.example.org~7"]["duffy_node_id"], 7);
    assert_eq!(hv["n1.ci.example.org~7"]["ansible_host"], "10.1.0.7");
    // a node of a retired session is in no session or tenant group
    assert_eq!(hv["n11.ci.example.org"]["duffy_session_id"], Value::Null);
    assert_eq!(hv["n11.ci.example.org"]["duffy_tenant"], Value::Null);
    // P3's arch comes from its pool config; its name does not follow the scheme: no release
    assert_eq!(hv["p3-1.example.org"]["duffy_arch"], "x86_64");
    assert!(hv["p3-1.example.org"].get("duffy_release").is_none());
    assert_eq!(hv["10.3.0.2"]["duffy_hostname"], Value::Null);
    // no artifacts group unless configured
    assert!(!text.contains("artifacts_projects_list"));
}

#[test]
fn host_returns_one_hosts_vars() {
    let env = setup("");
    let doc = list(&env.cfg.path);
    for h in ["n5.ci.example.org", "n1.ci.example.org~7", "10.3.0.2"] {
        let one = run_json(inventory_cmd(Some(&env.cfg.path)).args(["--host", h]));
        assert_eq!(one, doc["_meta"]["hostvars"][h], "{h}");
    }
    let none = run_json(inventory_cmd(Some(&env.cfg.path)).args(["--host", "nope"]));
    assert_eq!(none, json!({}));
    // -c works for people too, and --pretty indents
    let o = inventory_cmd(None)
        .args(["--pretty", "--host", "n5.ci.example.org", "-c"])
        .arg(&env.cfg.path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("{\n  \"ansible_host\": \"10.1.0.5\","));
}

#[test]
fn options_states_retired_prefix_attributes_and_artifacts() {
    let env = setup(
        "inventory:\n  states: [ready, done, failed]\n  include-retired: true\n  group-prefix: duffy_\n  \
         artifacts-group: hostgroup-role-artifacts-srv\n  attributes:\n    \
         flavour: {pools: {physical-centos9stream-x86_64: bare}, pool-regex: '^(?:virt|metal)-[^-]+-([^-]+)-'}\n",
    );
    let doc = list(&env.cfg.path);
    let g = groups(&doc);
    let names: Vec<&str> = g.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "duffy_duffy_all",
            "duffy_flavour_bare",
            "duffy_flavour_c5n",
            "duffy_pool_empty_pool",
            "duffy_pool_metal_ec2_c5n_centos_10s_x86_64",
            "duffy_pool_physical_centos9stream_x86_64",
            "duffy_pool_virt_ec2_c6g_centos_9s_aarch64",
            "duffy_state_done",
            "duffy_state_failed",
            "duffy_state_ready",
            "hostgroup-role-artifacts-srv",
        ]
    );
    assert_eq!(g["duffy_state_done"], ["n8.ci.example.org"]);
    assert_eq!(
        doc["_meta"]["hostvars"]["n8.ci.example.org"]["duffy_retired_at"],
        "2024-02-01T00:00:00Z"
    );
    assert_eq!(g["duffy_flavour_bare"], ["10.3.0.2", "p3-1.example.org"]);
    // the artifacts box: active, non-admin tenants in name order, one entry per key line
    assert_eq!(
        doc["hostgroup-role-artifacts-srv"],
        json!({"hosts": [], "vars": {"artifacts_projects_list": [
            {"name": "ci.user-x", "ssh_keys": [SSH_KEY]},
            {"name": "samba", "ssh_keys": [SSH_KEY, KEY2]},
            {"name": {"__ansible_unsafe": "t{{x}}"}, "ssh_keys": [SSH_KEY]},
        ]}})
    );

    // without retired nodes `done` stays empty (a done node is always retired)
    let env2 = setup("inventory: {states: [done], attributes: {}}\n");
    let g = groups(&list(&env2.cfg.path));
    assert_eq!(
        g.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "duffy_all",
            "pool_empty_pool",
            "pool_metal_ec2_c5n_centos_10s_x86_64",
            "pool_physical_centos9stream_x86_64",
            "pool_virt_ec2_c6g_centos_9s_aarch64",
            "state_done"
        ]
    );
    assert!(g.values().all(|h| h.is_empty()));
}

#[track_caller]
fn assert_one_line_error(o: &Output, code: i32, expected: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert_eq!(stdout(o), "");
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("duffy-inventory: "), "{err:?}");
    assert!(
        err.contains(expected),
        "{err:?} should contain {expected:?}"
    );
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    // no configuration at all
    let o = inventory_cmd(Some(dir.path()))
        .arg("--list")
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "database.sqlalchemy.sync_url: not set");
    // a bad database URL
    let o = inventory_cmd(Some(dir.path()))
        .arg("--list")
        .env("DUFFY_DATABASE_URL", "mysql://duffy:s3cret@db/duffy")
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "unsupported database URL scheme \"mysql\"");
    assert!(!stderr(&o).contains("s3cret"));
    // an unreachable database (nothing listens on that port)
    let port = free_port();
    let o = inventory_cmd(Some(dir.path()))
        .arg("--list")
        .env(
            "DUFFY_DATABASE_URL",
            format!("postgresql://duffy:s3cret@127.0.0.1:{port}/duffy"),
        )
        .output()
        .unwrap();
    assert_one_line_error(
        &o,
        1,
        &format!("cannot connect to PostgreSQL (duffy@127.0.0.1:{port}/duffy)"),
    );
    assert!(!stderr(&o).contains("s3cret"));
    // a server that accepts the connection and never answers: the time limit applies
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let cfg = TestConfig::new(
        &format!("postgresql://duffy@127.0.0.1:{port}/duffy"),
        "inventory: {connect-timeout: 1s}\n",
    );
    let started = std::time::Instant::now();
    let o = inventory_cmd(Some(&cfg.path))
        .arg("--list")
        .output()
        .unwrap();
    assert_one_line_error(&o, 1, "cannot connect to PostgreSQL");
    assert!(stderr(&o).contains("timed out after 1s"), "{}", stderr(&o));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(silent);
    // a database without duffy's schema
    let db = TestDb::empty();
    let o = inventory_cmd(Some(dir.path()))
        .arg("--list")
        .env("DUFFY_DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_one_line_error(&o, 1, "relation \"sessions\" does not exist");
    // an invalid inventory section names file and key
    let cfg = TestConfig::new(&db.url, "inventory: {states: [bogus]}\n");
    let o = inventory_cmd(Some(&cfg.path))
        .arg("--list")
        .output()
        .unwrap();
    assert_one_line_error(&o, 2, "inventory.states[0]: unknown variant `bogus`");
    // usage
    let o = inventory_cmd(Some(&cfg.path)).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = inventory_cmd(Some(&cfg.path))
        .args(["--list", "--host", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

// ---- the entry script --------------------------------------------------------------------

fn entry() -> PathBuf {
    repo().join("inventory/duffy.sh")
}

#[test]
fn entry_script_finds_the_binary_or_says_how_to_build_it() {
    let env = setup("");
    let expected = list(&env.cfg.path);
    let path = "/usr/local/bin:/usr/bin:/bin";
    // DUFFY_INVENTORY_BIN first
    let doc = run_json(
        inventory_cmd(Some(&env.cfg.path))
            .env("DUFFY_INVENTORY_BIN", env!("CARGO_BIN_EXE_duffy-inventory"))
            .env("PATH", path)
            .arg("--list")
            .arg0_script(),
    );
    assert_eq!(doc, expected);
    // PATH next
    let bindir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_duffy-inventory"),
        bindir.path().join("duffy-inventory"),
    )
    .unwrap();
    let doc = run_json(
        inventory_cmd(Some(&env.cfg.path))
            .env("PATH", format!("{}:{path}", bindir.path().display()))
            .arg("--list")
            .arg0_script(),
    );
    assert_eq!(doc, expected);
    // then <repo>/target/{release,debug}: a copy of the entry in a fake checkout
    let fake = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fake.path().join("inventory")).unwrap();
    let script = fake.path().join("inventory/duffy.sh");
    std::fs::copy(entry(), &script).unwrap();
    let o = inventory_cmd(Some(&env.cfg.path))
        .env("PATH", path)
        .arg("--list")
        .with_program(&script)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("the duffy-inventory binary is not built")
            && err.contains("cargo build --release --bin duffy-inventory"),
        "{err}"
    );
    std::fs::create_dir_all(fake.path().join("target/debug")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_duffy-inventory"),
        fake.path().join("target/debug/duffy-inventory"),
    )
    .unwrap();
    let doc = run_json(
        inventory_cmd(Some(&env.cfg.path))
            .env("PATH", path)
            .arg("--list")
            .with_program(&script),
    );
    assert_eq!(doc, expected);
    // reached through a symlink (e.g. from a playbook folder), the repo is still found
    let link = bindir.path().join("inv");
    std::os::unix::fs::symlink(&script, &link).unwrap();
    let doc = run_json(
        inventory_cmd(Some(&env.cfg.path))
            .env("PATH", path)
            .args(["--host", "n5.ci.example.org"])
            .with_program(&link),
    );
    assert_eq!(doc, expected["_meta"]["hostvars"]["n5.ci.example.org"]);
}

/// Re-target a prepared `Command` at another program, keeping its args and environment.
trait WithProgram {
    fn with_program(&mut self, program: &Path) -> Command;
    fn arg0_script(&mut self) -> Command {
        self.with_program(&entry())
    }
}

impl WithProgram for Command {
    fn with_program(&mut self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.get_args());
        for (k, v) in self.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

// ---- real ansible-core -------------------------------------------------------------------

struct Ansible {
    home: tempfile::TempDir,
    config: PathBuf,
}

impl Ansible {
    fn new(config: &Path) -> Ansible {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("ansible.cfg"),
            "[defaults]\nnocolor = True\nlocalhost_warning = False\n\n[inventory]\nunparsed_is_failed = True\n",
        )
        .unwrap();
        Ansible {
            home,
            config: config.to_path_buf(),
        }
    }

    fn cmd(&self, tool: &str) -> Command {
        let bin = ansible_bin();
        let mut cmd = inventory_cmd(Some(&self.config));
        let mut cmd = cmd.with_program(&bin.join(tool));
        cmd.env("DUFFY_INVENTORY_BIN", env!("CARGO_BIN_EXE_duffy-inventory"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("ANSIBLE_CONFIG", self.home.path().join("ansible.cfg"))
            .env("ANSIBLE_HOME", self.home.path())
            .env("ANSIBLE_LOCAL_TEMP", self.home.path().join("tmp"))
            .current_dir(repo());
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let o = self.cmd(tool).args(args).output().expect(tool);
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        o
    }
}

/// `{"__ansible_unsafe": s}` → `s`, at every depth
fn strip_unsafe(v: &Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("__ansible_unsafe") => {
            m["__ansible_unsafe"].clone()
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), strip_unsafe(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_unsafe).collect()),
        other => other.clone(),
    }
}

/// `ansible --list-hosts PATTERN` → host names
fn list_hosts(a: &Ansible, pattern: &str) -> BTreeSet<String> {
    let o = a.run(
        "ansible",
        &["-i", "inventory/duffy.sh", "--list-hosts", pattern],
    );
    let out = stdout(&o);
    let mut lines = out.lines();
    let head = lines.next().unwrap_or_default().trim().to_string();
    let hosts: BTreeSet<String> = lines
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(head, format!("hosts ({}):", hosts.len()), "{out}");
    hosts
}

#[test]
fn ansible_inventory_and_ansible_agree_with_the_binary() {
    let env = setup("");
    let doc = list(&env.cfg.path);
    let a = Ansible::new(&env.cfg.path);

    // --list --export: the same groups, hosts and hostvars
    let o = a.run(
        "ansible-inventory",
        &["-i", "inventory/duffy.sh", "--list", "--export"],
    );
    let err = stderr(&o);
    assert!(!err.contains("Invalid characters"), "{err}");
    assert!(
        !err.contains("[ERROR]") && !err.contains("[DEPRECATION"),
        "{err}"
    );
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours = groups(&doc);
    let children: BTreeSet<&str> = got["all"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .filter(|c| *c != "ungrouped")
        .collect();
    assert_eq!(children, ours.keys().map(String::as_str).collect());
    for (g, hosts) in &ours {
        let theirs: BTreeSet<&str> = got[g]["hosts"]
            .as_array()
            .map(|a| a.iter().map(|h| h.as_str().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(
            theirs,
            hosts.iter().map(String::as_str).collect(),
            "group {g}"
        );
    }
    assert_eq!(got["_meta"]["hostvars"], doc["_meta"]["hostvars"]);

    // --graph shows the pool / state / tenant / session groups with their hosts
    let o = a.run(
        "ansible-inventory",
        &["-i", "inventory/duffy.sh", "--graph"],
    );
    let graph = stdout(&o);
    for line in [
        "@pool_metal_ec2_c5n_centos_10s_x86_64:",
        "@state_failed:",
        "|  |--n1.ci.example.org~7",
        "@tenant_samba:",
        "@session_2:",
        "@arch_aarch64:",
        "@release_centos_9s:",
        "@duffy_all:",
    ] {
        assert!(graph.contains(line), "{line} missing from\n{graph}");
    }
    let o = a.run(
        "ansible-inventory",
        &["-i", "inventory/duffy.sh", "--graph", "tenant_samba"],
    );
    assert_eq!(
        stdout(&o),
        "@tenant_samba:\n  |--n3.ci.example.org\n  |--n4.ci.example.org\n"
    );

    // --list-hosts on patterns: the binary's groups, and Ansible's own set operations on them
    for pattern in [
        "pool_metal_ec2_c5n_centos_10s_x86_64",
        "session_3",
        "tenant_ci_user_x",
        "state_ready",
        "arch_x86_64",
    ] {
        let expected: BTreeSet<String> = ours[pattern].iter().cloned().collect();
        assert_eq!(list_hosts(&a, pattern), expected, "{pattern}");
    }
    let both = list_hosts(&a, "pool_metal_ec2_c5n_centos_10s_x86_64:&state_ready");
    assert_eq!(
        both,
        BTreeSet::from([
            "n1.ci.example.org".to_string(),
            "n2.ci.example.org".to_string()
        ])
    );

    // --host through Ansible
    let o = a.run(
        "ansible-inventory",
        &["-i", "inventory/duffy.sh", "--host", "n5.ci.example.org"],
    );
    let host: Value = serde_json::from_slice(&o.stdout).unwrap();
    // (`--host` prints the values, without the unsafe markers)
    assert_eq!(
        host,
        strip_unsafe(&doc["_meta"]["hostvars"]["n5.ci.example.org"])
    );

    // a value that looks like a template stays literal in a play (debug runs on the controller)
    let o = a.run(
        "ansible",
        &[
            "-i",
            "inventory/duffy.sh",
            "n5.ci.example.org",
            "-m",
            "debug",
            "-a",
            "var=duffy_data.note",
        ],
    );
    assert!(
        stdout(&o).contains("\"duffy_data.note\": \"{{ 40 + 2 }}\""),
        "{}",
        stdout(&o)
    );
}

#[test]
fn ansible_feeds_the_artifacts_role_and_reports_database_errors() {
    let env = setup("inventory: {artifacts-group: hostgroup-role-artifacts-srv}\n");
    let a = Ansible::new(&env.cfg.path);
    // the artifacts box itself lives in the static inventory; duffy adds the variable
    let stat = a.home.path().join("static.ini");
    std::fs::write(
        &stat,
        "[hostgroup-role-artifacts-srv]\nartifacts.example.org ansible_connection=local\n",
    )
    .unwrap();
    let o = a.run(
        "ansible",
        &[
            "-i",
            stat.to_str().unwrap(),
            "-i",
            "inventory/duffy.sh",
            "artifacts.example.org",
            "-m",
            "debug",
            "-a",
            "var=artifacts_projects_list",
        ],
    );
    let out = stdout(&o);
    let json_part = &out[out.find('{').unwrap()..];
    let v: Value = serde_json::from_str(json_part).unwrap();
    assert_eq!(
        v["artifacts_projects_list"],
        json!([
            {"name": "ci.user-x", "ssh_keys": [SSH_KEY]},
            {"name": "samba", "ssh_keys": [SSH_KEY, KEY2]},
            {"name": "t{{x}}", "ssh_keys": [SSH_KEY]},
        ])
    );

    // an unreachable database: Ansible shows our one line (and fails, with unparsed_is_failed)
    let port = free_port();
    let o = a
        .cmd("ansible-inventory")
        .args(["-i", "inventory/duffy.sh", "--list"])
        .env(
            "DUFFY_DATABASE_URL",
            format!("postgresql://postgres@127.0.0.1:{port}/duffy"),
        )
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("duffy-inventory: cannot connect to PostgreSQL"),
        "{err}"
    );
}

/// Issue 12 item 5: the secrets of [`SECRET_NODE`] appear neither in `--list` nor in `--host`.
const SECRET_NODE: &str = r#"{"ipmi": {"address": "10.9.0.1", "password": "IPMI-S3CRET-1"},
  "provision": {"private_key": "PROV-S3CRET-2", "private_ip_address": "10.0.0.5"},
  "secrets": {"db": "NESTED-S3CRET-3"}, "list": [{"api_key": "LIST-S3CRET-4"}]}"#;

#[test]
fn node_data_secrets_are_in_no_inventory_output() {
    let env = setup("");
    env._db.exec(&format!(
        "INSERT INTO nodes (id, hostname, ipaddr, state, pool, reusable, data) VALUES
           (20, 's20.example.org', '10.1.0.20', 'ready', '{P1}', false, '{SECRET_NODE}')"
    ));
    let doc = list(&env.cfg.path);
    let host = run_json(inventory_cmd(Some(&env.cfg.path)).args(["--host", "s20.example.org"]));
    for out in [doc.to_string(), host.to_string()] {
        assert!(!out.contains("S3CRET"), "{out}");
    }
    assert_eq!(
        host["duffy_data"],
        json!({"ipmi": {"address": "10.9.0.1"}, "provision": {"private_ip_address": "10.0.0.5"},
               "list": [{}]})
    );
}

/// Issue 12 item 3: a template written with JSON escapes (`\u007b\u007b … \u007d\u007d`, as the
/// `json` column keeps the text as written) is marked unsafe like a plain one: Ansible prints
/// the literal text and never runs the lookup in it on the controller.
#[test]
fn escaped_templates_in_node_data_stay_literal_in_ansible() {
    let env = setup("");
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    // the JSON text as written: `{` and `}` as `\u007b`/`\u007B`/`\u007d`/`\u007D`
    let data = format!(
        r#"{{"note": "\u007b\u007b lookup('pipe', 'touch {}') \u007D\u007d", "deep": [{{"x": "\u007B% if true %\u007dyes\u007b% endif %\u007d"}}]}}"#,
        marker.display()
    );
    env._db.exec(&format!(
        "INSERT INTO nodes (id, hostname, ipaddr, state, pool, reusable, data) VALUES
           (21, 'esc.example.org', '10.1.0.21', 'ready', '{P1}', false, $d${data}$d$)"
    ));
    let literal = format!("{{{{ lookup('pipe', 'touch {}') }}}}", marker.display());
    let doc = list(&env.cfg.path);
    let data = &doc["_meta"]["hostvars"]["esc.example.org"]["duffy_data"];
    assert_eq!(data["note"], json!({"__ansible_unsafe": literal}), "{data}");
    assert_eq!(
        data["deep"][0]["x"],
        json!({"__ansible_unsafe": "{% if true %}yes{% endif %}"}),
        "{data}"
    );

    let a = Ansible::new(&env.cfg.path);
    let debug = |arg: &str| {
        stdout(&a.run(
            "ansible",
            &[
                "-i",
                "inventory/duffy.sh",
                "esc.example.org",
                "-m",
                "debug",
                "-a",
                arg,
            ],
        ))
    };
    for arg in ["var=duffy_data.note", "msg={{ duffy_data.note }}"] {
        let out = debug(arg);
        assert!(
            out.contains(&serde_json::to_string(&literal).unwrap()),
            "{arg}: {out}"
        );
        assert!(!marker.exists(), "{arg}: the lookup ran on the controller");
    }
    let out = debug("var=duffy_data.deep");
    assert!(out.contains("{% if true %}yes{% endif %}"), "{out}");
}
