//! duffy's Ansible binary modules under a real ansible-core (installed into a venv by
//! `.ci/ansible-venv.sh` when missing — never skipped): playbooks run with
//! `ansible-playbook -c local -i localhost,` and a JSON stdout callback
//! (`tests/ansible/callback_plugins/json.py`, the shape of ansible.posix.json), against a
//! throw-away database per test and, for the REST path, a real `duffy serve`.
//!
//! Covered: create, idempotent second run (`changed=0`), `--check --diff` (predicts, writes
//! nothing), every kind of validation error, refused state transitions, the REST and DB paths
//! of `duffy_session`, `ansible-doc` on the sidecars, and that no secret (API keys, database
//! and BMC passwords) appears in any output, also at `-vvv`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ipmi_sim::IpmiSim;
use common::*;
use serde_json::Value;

/// The module binaries Cargo built for this test.
const MODULES: &[(&str, &str)] = &[
    ("duffy_tenant", env!("CARGO_BIN_EXE_duffy_tenant")),
    ("duffy_node", env!("CARGO_BIN_EXE_duffy_node")),
    ("duffy_session", env!("CARGO_BIN_EXE_duffy_session")),
    ("ipmi_power", env!("CARGO_BIN_EXE_ipmi_power")),
];

/// A library folder like `modules/`: each binary (debug info stripped: Ansible uploads the
/// file for every task) next to its committed sidecar.
fn make_library(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bin) in MODULES {
        let dest = dir.join(name);
        let stripped = Command::new("objcopy")
            .args(["--strip-debug", bin])
            .arg(&dest)
            .status()
            .is_ok_and(|s| s.success());
        if !stripped {
            std::fs::copy(bin, &dest).unwrap();
        }
        std::fs::copy(
            repo().join("modules").join(format!("{name}.yml")),
            dir.join(format!("{name}.yml")),
        )
        .unwrap();
    }
}

/// A test's world: its database, a duffy config, a library and an ansible.cfg in a temp dir.
struct Lab {
    dir: tempfile::TempDir,
    db: TestDb,
    config: PathBuf,
}

/// One `ansible-playbook` run.
struct Played {
    rc: i32,
    doc: Value,
    stdout: String,
    stderr: String,
}

impl Played {
    fn stats(&self) -> &Value {
        &self.doc["stats"]["localhost"]
    }
    fn changed(&self) -> i64 {
        self.stats()["changed"].as_i64().unwrap_or(-1)
    }
    fn failures(&self) -> i64 {
        self.stats()["failures"].as_i64().unwrap_or(-1)
    }
    /// localhost's result of the task named `name` (the last one of that name).
    fn task(&self, name: &str) -> &Value {
        let mut found = None;
        for play in self.doc["plays"].as_array().into_iter().flatten() {
            for t in play["tasks"].as_array().into_iter().flatten() {
                if t["task"]["name"] == name {
                    found = Some(&t["hosts"]["localhost"]);
                }
            }
        }
        found.unwrap_or_else(|| panic!("no task {name:?} in {}", self.doc))
    }
    fn msg(&self, name: &str) -> String {
        self.task(name)["msg"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
    fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

const PLAY_HEAD: &str = "- hosts: localhost
  gather_facts: false
  module_defaults:
    duffy_tenant: {config: \"{{ duffy_config }}\"}
    duffy_node: {config: \"{{ duffy_config }}\"}
    duffy_session: {config: \"{{ duffy_config }}\"}
    ipmi_power: {host: 127.0.0.1, port: \"{{ bmc_port | default(623) }}\", timeout: 1, retries: 1}
  tasks:
";

impl Lab {
    fn new() -> Lab {
        let db = TestDb::migrated();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("duffy.yaml");
        std::fs::write(
            &config,
            format!(
                "database:\n  sqlalchemy:\n    sync_url: {}\n{DEFAULTS_YAML}{}",
                db.url,
                pools_yaml(&[("p1", 2), ("p2", 1)])
            ),
        )
        .unwrap();
        make_library(&dir.path().join("library"));
        std::fs::write(
            dir.path().join("ansible.cfg"),
            ansible_cfg("library = ./library\n"),
        )
        .unwrap();
        Lab { dir, db, config }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cmd(&self, tool: &str) -> Command {
        let bin = ansible_bin();
        let home = self.path("home");
        let mut cmd = Command::new(bin.join(tool));
        cmd.current_dir(self.dir.path())
            .env_remove("DUFFY_CONFIG")
            .env_remove("DUFFY_DATABASE_URL")
            .env_remove("ANSIBLE_STDOUT_CALLBACK")
            .env_remove("ANSIBLE_LIBRARY")
            .env("ANSIBLE_CONFIG", self.path("ansible.cfg"))
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_REMOTE_TMP", home.join("remote-tmp"))
            .env("ANSIBLE_LOCAL_TEMP", home.join("local-tmp"))
            .env("HOME", &home)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        cmd
    }

    /// Write `tasks` (indented by 4) under [`PLAY_HEAD`] as `<name>.yml` and run it.
    fn play(&self, name: &str, tasks: &str, args: &[&str]) -> Played {
        self.play_with(name, tasks, args, |_| {})
    }

    fn play_with(
        &self,
        name: &str,
        tasks: &str,
        args: &[&str],
        tweak: impl FnOnce(&mut Command),
    ) -> Played {
        let file = self.path(&format!("{name}.yml"));
        std::fs::write(&file, format!("{PLAY_HEAD}{tasks}")).unwrap();
        let mut cmd = self.cmd("ansible-playbook");
        cmd.args(["-i", "localhost,", "-c", "local"])
            .arg("-e")
            .arg(format!("duffy_config={}", self.config.display()))
            .arg("-e")
            .arg(format!("out={}", self.dir.path().display()))
            .args(args)
            .arg(&file);
        tweak(&mut cmd);
        let o: Output = cmd.output().expect("run ansible-playbook");
        let out = stdout(&o);
        let doc = serde_json::from_str(&out).unwrap_or(Value::Null);
        Played {
            rc: o.status.code().unwrap_or(-1),
            doc,
            stdout: out,
            stderr: stderr(&o),
        }
    }

    fn count(&self, sql: &str) -> i64 {
        self.db.query_strings(sql)[0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .unwrap()
    }

    fn one(&self, sql: &str) -> Option<String> {
        self.db.query_strings(sql).into_iter().next().flatten()
    }
}

/// Indent a task list (written flush left) by 4 spaces.
fn tasks(s: &str) -> String {
    s.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("    {l}\n")
            }
        })
        .collect()
}

#[test]
fn duffy_tenant_create_idempotent_check_diff_retire() {
    let lab = Lab::new();
    let t = tasks(&format!(
        "- name: tenant
  duffy_tenant:
    name: ci-team
    ssh_key: \"{SSH_KEY}\"
    node_quota: \"{{{{ quota | default(5) }}}}\"
    session_lifetime: 6h
    is_admin: false
  register: t
"
    ));

    // check mode on a fresh database: predicts the creation, writes nothing
    let p = lab.play("tenant", &t, &["--check", "--diff"]);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.changed(), 1);
    let r = p.task("tenant");
    assert_eq!(r["diff"]["before"], serde_json::json!({}));
    assert_eq!(r["diff"]["after"]["node_quota"], 5);
    assert_eq!(r["diff"]["after"]["session_lifetime"], 21600);
    assert!(
        r.get("api_key").is_none(),
        "no key is generated in check mode"
    );
    assert_eq!(lab.count("SELECT count(*) FROM tenants"), 0);

    // create
    let p = lab.play("tenant", &t, &[]);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.changed(), 1);
    let r = p.task("tenant");
    assert_eq!(r["api_key_created"], true);
    let key = r["api_key"]
        .as_str()
        .expect("api_key on create")
        .to_string();
    assert_eq!(key.len(), 36);
    let warning = r["warnings"].to_string() + &p.stderr;
    assert!(warning.contains("no_log"), "{warning}");
    assert_eq!(r["tenant"]["node_quota"], 5);
    let hash = lab
        .one("SELECT api_key FROM tenants WHERE name = 'ci-team'")
        .unwrap();
    assert!(duffy::apikey::verify(&key, &hash), "the returned key works");
    assert_eq!(
        lab.one("SELECT actor FROM duffy_audit_log WHERE entity = 'tenant' AND action = 'create'")
            .as_deref(),
        Some("ansible:duffy_tenant")
    );

    // the second identical run changes nothing and shows no key
    let p = lab.play("tenant", &t, &[]);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.changed(), 0, "not idempotent: {}", p.stdout);
    assert!(p.task("tenant").get("api_key").is_none());
    assert_eq!(p.task("tenant")["api_key_created"], false);

    // --check --diff on the converged state: nothing, no diff
    let p = lab.play("tenant", &t, &["--check", "--diff"]);
    assert_eq!(p.changed(), 0);
    assert!(p.task("tenant").get("diff").is_none());

    // --check --diff with a new quota: predicted, not written
    let p = lab.play("tenant", &t, &["--check", "--diff", "-e", "quota=7"]);
    assert_eq!(p.rc, 0);
    assert_eq!(p.changed(), 1);
    let d = &p.task("tenant")["diff"];
    assert_eq!(d["before"]["node_quota"], 5);
    assert_eq!(d["after"]["node_quota"], 7);
    assert_eq!(d["before_header"], "tenant ci-team");
    assert!(!d.to_string().contains(&hash), "no key hash in the diff");
    assert_eq!(
        lab.one("SELECT node_quota FROM tenants WHERE name = 'ci-team'")
            .as_deref(),
        Some("5")
    );
    let p = lab.play("tenant", &t, &["--diff", "-e", "quota=7"]);
    assert_eq!(p.changed(), 1);
    assert_eq!(p.msg("tenant"), "tenant ci-team changed: node_quota");
    assert_eq!(
        lab.one("SELECT node_quota FROM tenants WHERE name = 'ci-team'")
            .as_deref(),
        Some("7")
    );

    // retire, idempotently; present again unretires
    let retire = tasks(
        "- name: retire
  duffy_tenant: {name: ci-team, state: retired}
",
    );
    let p = lab.play("retire", &retire, &[]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert!(lab
        .one("SELECT retired_at FROM tenants WHERE name = 'ci-team'")
        .is_some());
    let p = lab.play("retire", &retire, &[]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);
    // unretire + a change that fails is one transaction: the tenant stays retired
    let p = lab.play(
        "toolong",
        &tasks("- name: toolong\n  duffy_tenant: {name: ci-team, session_lifetime: 80000d}\n"),
        &[],
    );
    assert_eq!(p.rc, 2, "{}", p.stdout);
    assert!(
        p.msg("toolong").contains("session_lifetime"),
        "{}",
        p.msg("toolong")
    );
    assert!(
        lab.one("SELECT retired_at FROM tenants WHERE name = 'ci-team'")
            .is_some(),
        "a failed change left the tenant unretired"
    );
    let p = lab.play("tenant", &t, &["-e", "quota=7"]);
    assert_eq!(p.changed(), 1);
    assert!(p.msg("tenant").contains("active"), "{}", p.msg("tenant"));
    assert!(lab
        .one("SELECT retired_at FROM tenants WHERE name = 'ci-team'")
        .is_none());

    // creating without ssh_key is refused with a reason
    let p = lab.play(
        "nokey",
        &tasks("- name: nokey\n  duffy_tenant: {name: other}\n"),
        &[],
    );
    assert_eq!(p.rc, 2);
    assert!(
        p.msg("nokey").contains("ssh_key is required"),
        "{}",
        p.msg("nokey")
    );
}

#[test]
fn duffy_node_state_machine_via_ansible() {
    let lab = Lab::new();
    let t = tasks(
        "- name: node
  duffy_node:
    hostname: n1.example.net
    ipaddr: \"{{ ip | default('127.3.0.1') }}\"
    pool: p1
    state: \"{{ st | default('ready') }}\"
    comment: \"{{ comment | default(omit) }}\"
    data: {architecture: x86_64, bmc_credential: rack1}
",
    );
    let p = lab.play("node", &t, &["--check", "--diff"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    assert_eq!(p.task("node")["diff"]["after"]["state"], "ready");
    assert_eq!(lab.count("SELECT count(*) FROM nodes"), 0);

    let p = lab.play("node", &t, &["--diff"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    let n = &p.task("node")["node"];
    assert_eq!(n["state"], "ready");
    assert_eq!(n["reusable"], true);
    assert_eq!(n["data"]["architecture"], "x86_64");
    let p = lab.play("node", &t, &[]);
    assert_eq!((p.rc, p.changed()), (0, 0), "not idempotent: {}", p.stdout);
    let p = lab.play("node", &t, &["--check", "--diff"]);
    assert_eq!(p.changed(), 0);
    assert!(p.task("node").get("diff").is_none());

    // check mode for a state change: predicted, nothing written
    let p = lab.play(
        "node",
        &t,
        &[
            "--check",
            "--diff",
            "-e",
            "st=failed",
            "-e",
            "comment=broken",
        ],
    );
    assert_eq!(p.changed(), 1);
    let d = &p.task("node")["diff"];
    assert_eq!(d["before"]["state"], "ready");
    assert_eq!(d["after"]["state"], "failed");
    assert_eq!(d["after"]["comment"], "broken");
    assert_eq!(lab.one("SELECT state FROM nodes").as_deref(), Some("ready"));

    // a move the transition table does not allow: refused, explained, nothing written
    let p = lab.play("node", &t, &["-e", "st=unused", "-e", "comment=x"]);
    assert_eq!(p.rc, 2);
    let msg = p.msg("node");
    assert!(
        msg.contains("illegal node state transition ready -> unused")
            && msg.contains("deprovisioning")
            && msg.contains("failed"),
        "{msg}"
    );
    assert_eq!(p.task("node")["transition"]["from"], "ready");
    assert_eq!(
        lab.one("SELECT coalesce(comment, '-') FROM nodes")
            .as_deref(),
        Some("-")
    );
    let p = lab.play("node", &t, &["-e", "st=absent"]);
    assert_eq!(p.rc, 2);
    assert!(
        p.msg("node").contains("absent retires nodes"),
        "{}",
        p.msg("node")
    );

    // failed, then absent (retired), then absent again is a no-op
    let p = lab.play("node", &t, &["-e", "st=failed", "-e", "comment=broken"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert_eq!(
        lab.one("SELECT state || ' ' || comment FROM nodes")
            .as_deref(),
        Some("failed broken")
    );
    let p = lab.play("node", &t, &["-e", "st=absent"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert_eq!(
        lab.one("SELECT state || ' ' || (retired_at IS NOT NULL) FROM nodes")
            .as_deref(),
        Some("done true")
    );
    let p = lab.play("node", &t, &["-e", "st=absent"]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);
    // the history: created ready, then failed, then done — all by the operator
    let hist = lab.db.query_strings(
        "SELECT coalesce(from_state::text, '-') || '>' || to_state || ':' || actor FROM duffy_node_history ORDER BY id",
    );
    let hist: Vec<String> = hist.into_iter().flatten().collect();
    assert_eq!(
        hist,
        [
            "->ready:operator",
            "ready>failed:operator",
            "failed>done:operator"
        ]
    );

    // the hostname is free again: a new row; a bad address is refused
    let p = lab.play("node", &t, &["-e", "st=present"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert_eq!(p.task("node")["node"]["state"], "unused");
    let p = lab.play("node", &t, &["-e", "ip=300.1.1.1"]);
    assert_eq!(p.rc, 2);
    assert!(p.msg("node").contains("not an IPv4 or IPv6 address"));
}

#[test]
fn duffy_session_over_rest_and_database() {
    let lab = Lab::new();
    let key = create_tenant(&lab.config, "ci-team", &["--node-quota", "3"]);
    add_ready_nodes(&lab.db, "p1", 3, 41);
    add_ready_nodes(&lab.db, "p2", 1, 42);
    let server = Server::start(&lab.config);
    let api = format!("{}/api/v1", server.url());

    let rest = tasks(
        "- name: session
  duffy_session:
    api_url: \"{{ api }}\"
    auth_name: ci-team
    auth_key: \"{{ key }}\"
    nodes_specs: [{pool: p1, quantity: 2}]
    reuse: true
    lifetime: \"{{ lifetime | default('3h') }}\"
",
    );
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            "-e".to_string(),
            format!("api={api}"),
            "-e".to_string(),
            format!("key={key}"),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |name: &str, t: &str, extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        lab.play(name, t, &a)
    };

    let p = run("rest", &rest, &["--check", "--diff"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    assert_eq!(lab.count("SELECT count(*) FROM sessions"), 0);

    let p = run("rest", &rest, &["--diff"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    let r = p.task("session");
    let id = r["session_id"].as_i64().unwrap();
    assert_eq!(r["hostnames"].as_array().unwrap().len(), 2);
    assert_eq!(r["nodes"][0]["pool"], "p1");
    assert_eq!(
        lab.count(&format!(
            "SELECT round(extract(epoch FROM expires_at - created_at))::bigint FROM sessions WHERE id = {id}"
        )),
        3 * 3600
    );

    // reuse: the same session, nothing changed
    let p = run("rest", &rest, &[]);
    assert_eq!((p.rc, p.changed()), (0, 0), "not idempotent: {}", p.stdout);
    assert_eq!(p.task("session")["session_id"], id);
    assert_eq!(lab.count("SELECT count(*) FROM sessions"), 1);

    // a new lifetime: predicted in check mode, then set (counted from creation)
    let p = run("rest", &rest, &["--check", "--diff", "-e", "lifetime=5h"]);
    assert_eq!(p.changed(), 1);
    assert_ne!(
        p.task("session")["diff"]["before"]["expires_at"],
        p.task("session")["diff"]["after"]["expires_at"]
    );
    let p = run("rest", &rest, &["-e", "lifetime=5h"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert_eq!(
        lab.count(&format!(
            "SELECT round(extract(epoch FROM expires_at - created_at))::bigint FROM sessions WHERE id = {id}"
        )),
        5 * 3600
    );
    let p = run("rest", &rest, &["-e", "lifetime=5h"]);
    assert_eq!(p.changed(), 0);

    // over the quota (3): the API's refusal is the message
    let over = tasks(
        "- name: over
  duffy_session:
    api_url: \"{{ api }}\"
    auth_name: ci-team
    auth_key: \"{{ key }}\"
    nodes_specs: [{pool: p1, quantity: 1}, {pool: p2, quantity: 1}]
",
    );
    let p = run("over", &over, &[]);
    assert_eq!(p.rc, 2);
    assert!(p.msg("over").contains("quota"), "{}", p.msg("over"));

    // retire, idempotently
    let retire = tasks(
        "- name: retire
  duffy_session:
    api_url: \"{{ api }}\"
    auth_name: ci-team
    auth_key: \"{{ key }}\"
    session_id: \"{{ sid }}\"
    state: absent
",
    );
    let sid = format!("sid={id}");
    let p = run("retire", &retire, &["--check", "-e", &sid]);
    assert_eq!(p.changed(), 1);
    assert!(lab
        .one(&format!("SELECT retired_at FROM sessions WHERE id = {id}"))
        .is_none());
    let p = run("retire", &retire, &["-e", &sid]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert!(lab
        .one(&format!("SELECT retired_at FROM sessions WHERE id = {id}"))
        .is_some());
    let p = run("retire", &retire, &["-e", &sid]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);

    // the database path: the operator requests a session for the tenant
    let dbp = tasks(
        "- name: dbsession
  duffy_session:
    tenant: ci-team
    nodes_specs: [{pool: p2, quantity: 1}]
    reuse: true
  register: s
- name: dbretire
  duffy_session:
    session_id: \"{{ s.session_id }}\"
    state: \"{{ final | default('present') }}\"
",
    );
    let p = lab.play("dbsession", &dbp, &[]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    let sid2 = p.task("dbsession")["session_id"].as_i64().unwrap();
    assert_ne!(sid2, id);
    assert_eq!(p.task("dbsession")["hostnames"][0], "p2-0.example.net");
    let p = lab.play("dbsession", &dbp, &[]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);
    let p = lab.play("dbsession", &dbp, &["-e", "final=absent"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert_eq!(
        lab.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {sid2} AND retired_at IS NOT NULL"
        )),
        1
    );
    drop(server);
}

#[test]
fn every_validation_error_fails_the_task_with_a_message() {
    let lab = Lab::new();
    let t = tasks(
        "- name: unknown option
  duffy_tenant: {name: x, bogus_opt: 1}
  ignore_errors: true
- name: wrong type
  duffy_tenant: {name: x, node_quota: lots}
  ignore_errors: true
- name: wrong bool
  duffy_node: {hostname: x, reusable: maybe}
  ignore_errors: true
- name: bad choice
  duffy_node: {hostname: x, state: gone}
  ignore_errors: true
- name: missing required
  duffy_node: {ipaddr: 127.0.0.9}
  ignore_errors: true
- name: mutually exclusive
  duffy_session: {api_url: 'http://127.0.0.1:1/api/v1', database_url: 'postgresql://u@h/d', session_id: 1}
  ignore_errors: true
- name: required if
  duffy_session: {state: absent}
  ignore_errors: true
- name: required together
  duffy_session: {auth_name: x, nodes_specs: [{pool: p1, quantity: 1}]}
  ignore_errors: true
- name: suboption
  duffy_session: {tenant: x, nodes_specs: [{pool: p1}]}
  ignore_errors: true
- name: bad duration
  duffy_tenant: {name: x, session_lifetime: forever}
  ignore_errors: true
- name: bad config
  duffy_tenant: {name: x, config: /nonexistent/duffy.yaml}
  ignore_errors: true
- name: free-form arguments are coerced
  duffy_node: hostname=n9.example.net reusable=no state=ready
  check_mode: true
",
    );
    let p = lab.play("errors", &t, &[]);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    let expect = [
        (
            "unknown option",
            "Unsupported parameters for (duffy_tenant) module: bogus_opt. Supported parameters include: api_key, config,",
        ),
        (
            "wrong type",
            "argument 'node_quota' is of type str and we were unable to convert to int",
        ),
        ("wrong bool", "is not a valid boolean"),
        (
            "bad choice",
            "value of state must be one of: present, absent, unused, provisioning, ready, failed, deprovisioning, done, got: gone",
        ),
        ("missing required", "missing required arguments: hostname"),
        (
            "mutually exclusive",
            "parameters are mutually exclusive: api_url|database_url",
        ),
        (
            "required if",
            "state is absent but all of the following are missing: session_id",
        ),
        (
            "required together",
            "parameters are required together: auth_name, auth_key",
        ),
        (
            "suboption",
            "missing required arguments: quantity found in nodes_specs (element 1)",
        ),
        ("bad duration", "session_lifetime: expected a duration"),
        ("bad config", "/nonexistent/duffy.yaml: no such config file"),
    ];
    for (task, want) in expect {
        let r = p.task(task);
        assert_eq!(r["failed"], true, "{task}: {r}");
        let msg = r["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{task}: {msg:?} lacks {want:?}");
    }
    assert_eq!(
        p.stats()["ignored"].as_i64(),
        Some(expect.len() as i64),
        "{}",
        p.stdout
    );
    let r = p.task("free-form arguments are coerced");
    assert_eq!(r["changed"], true, "{r}");
    assert!(r["diff"].is_null());
    assert!(r["msg"]
        .as_str()
        .unwrap()
        .contains("would be created (ready)"));
    assert_eq!(lab.count("SELECT count(*) FROM nodes"), 0);
    assert_eq!(lab.count("SELECT count(*) FROM tenants"), 0);
}

#[test]
fn no_secret_appears_in_any_output() {
    let lab = Lab::new();
    add_ready_nodes(&lab.db, "p1", 1, 43);
    let server = Server::start(&lab.config);
    let api = format!("{}/api/v1", server.url());
    let given_key = uuid::Uuid::new_v4().to_string();
    let wrong_key = uuid::Uuid::new_v4().to_string();
    let db_password = format!("DbPw-{}", uuid::Uuid::new_v4().simple());
    let bmc_password = format!("BmcPw-{}", uuid::Uuid::new_v4().simple());
    // the test server trusts local connections: any password is accepted
    let url_with_pw = lab
        .db
        .url
        .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    assert!(url_with_pw.contains(&db_password), "{url_with_pw}");
    let dead_url = format!("postgresql://postgres:{db_password}@127.0.0.1:1/nothere");

    let t = tasks(&format!(
        "- name: tenant with a given key
  duffy_tenant:
    name: leaky
    ssh_key: \"{SSH_KEY}\"
    api_key: \"{{{{ given_key }}}}\"
    database_url: \"{{{{ url_with_pw }}}}\"
- name: wrong key over REST
  duffy_session:
    api_url: \"{{{{ api }}}}\"
    auth_name: leaky
    auth_key: \"{{{{ wrong_key }}}}\"
    nodes_specs: [{{pool: p1, quantity: 1}}]
  ignore_errors: true
- name: right key, unknown pool
  duffy_session:
    api_url: \"{{{{ api }}}}\"
    auth_name: leaky
    auth_key: \"{{{{ given_key }}}}\"
    nodes_specs: [{{pool: nosuchpool, quantity: 1}}]
  ignore_errors: true
- name: node with a BMC password in data
  duffy_node:
    hostname: bmc.example.net
    ipaddr: 127.44.0.1
    data: {{bmc: 127.0.0.1, bmc_password: \"{{{{ bmc_password }}}}\"}}
    database_url: \"{{{{ url_with_pw }}}}\"
- name: unreachable database
  duffy_tenant: {{name: leaky, database_url: \"{{{{ dead_url }}}}\"}}
  ignore_errors: true
- name: misspelt secret option
  duffy_tenant: {{name: leaky, api_kye: \"{{{{ given_key }}}}\"}}
  ignore_errors: true
- name: reset key
  duffy_tenant: {{name: leaky, reset_api_key: true}}
  register: reset
  no_log: true
- name: keep the new key
  ansible.builtin.copy:
    content: \"{{{{ reset.api_key }}}}\"
    dest: \"{{{{ out }}}}/new.key\"
    mode: \"0600\"
  no_log: true
"
    ));
    let vars = [
        format!("api={api}"),
        format!("given_key={given_key}"),
        format!("wrong_key={wrong_key}"),
        format!("url_with_pw={url_with_pw}"),
        format!("dead_url={dead_url}"),
        format!("bmc_password={bmc_password}"),
    ];
    let mut args: Vec<&str> = Vec::new();
    for v in &vars {
        args.push("-e");
        args.push(v);
    }
    // JSON callback, diff mode
    let mut json_args = args.clone();
    json_args.push("--diff");
    let p1 = lab.play("leak", &t, &json_args);
    assert_eq!(p1.rc, 0, "{}{}", p1.stdout, p1.stderr);
    let new_key = std::fs::read_to_string(lab.path("new.key")).unwrap();
    assert_eq!(new_key.len(), 36);
    let hash = lab
        .one("SELECT api_key FROM tenants WHERE name = 'leaky'")
        .unwrap();
    assert!(duffy::apikey::verify(&new_key, &hash));
    // the tasks did what they should
    assert_eq!(p1.task("tenant with a given key")["changed"], true);
    assert_eq!(p1.task("tenant with a given key")["api_key_created"], false);
    assert_eq!(
        p1.task("tenant with a given key")["invocation"]["module_args"]["api_key"],
        "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    );
    assert!(
        p1.msg("wrong key over REST").contains("401")
            || p1.msg("wrong key over REST").contains("refused"),
        "{}",
        p1.msg("wrong key over REST")
    );
    assert!(
        p1.msg("unreachable database").contains("cannot connect"),
        "{}",
        p1.msg("unreachable database")
    );
    assert!(p1.task("reset key").get("censored").is_some());

    // default callback at -vvv (shows invocation, diffs, module paths and arguments files)
    let mut vvv = args.clone();
    vvv.extend(["-vvv", "--diff"]);
    let p2 = lab.play_with("leak", &t, &vvv, |c| {
        c.env("ANSIBLE_STDOUT_CALLBACK", "default");
    });
    assert_eq!(p2.rc, 0, "{}{}", p2.stdout, p2.stderr);
    assert!(
        p2.stdout.contains("VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"),
        "{}",
        p2.stdout
    );

    let new_key2 = std::fs::read_to_string(lab.path("new.key")).unwrap();
    assert_ne!(new_key, new_key2, "reset_api_key resets every time");
    for (what, secret) in [
        ("given API key", given_key.as_str()),
        ("wrong API key", wrong_key.as_str()),
        ("database password", db_password.as_str()),
        ("BMC password", bmc_password.as_str()),
        ("reset API key", new_key.as_str()),
        ("second reset API key", new_key2.as_str()),
    ] {
        for (run, p) in [("json", &p1), ("-vvv", &p2)] {
            let all = p.all_output();
            assert!(
                !all.contains(secret),
                "the {what} leaked into the {run} output:\n{all}"
            );
        }
    }
    // nor into the audit log
    let audit = lab
        .db
        .query_strings("SELECT detail::text FROM duffy_audit_log")
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !audit.contains(&given_key) && !audit.contains(&new_key),
        "{audit}"
    );
    drop(server);
}

#[test]
fn ansible_doc_renders_every_sidecar() {
    let lab = Lab::new();
    for (name, _) in MODULES {
        let o = lab
            .cmd("ansible-doc")
            .args(["-M", "library", name])
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(o.status.success(), "ansible-doc {name}: {}", stderr(&o));
        assert!(
            out.contains(name) && out.contains("EXAMPLES") && out.contains("RETURN"),
            "{out}"
        );
        assert!(out.contains("config") && out.contains("state"), "{out}");
        let o = lab
            .cmd("ansible-doc")
            .args(["-M", "library", "-s", name])
            .output()
            .unwrap();
        assert!(o.status.success(), "ansible-doc -s {name}: {}", stderr(&o));
        assert!(stdout(&o).contains(&format!("{name}:")), "{}", stdout(&o));
    }
    // the example playbooks resolve every module
    let examples = repo().join("playbooks/examples");
    for e in std::fs::read_dir(&examples).unwrap() {
        let path = e.unwrap().path();
        let o = lab
            .cmd("ansible-playbook")
            .args(["-M", "library", "-i", "localhost,", "--syntax-check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}{}",
            path.display(),
            stdout(&o),
            stderr(&o)
        );
    }
}

#[test]
fn binaries_answer_json_without_ansible() {
    for (name, bin) in MODULES {
        let o = Command::new(bin).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert_eq!(v["failed"], true);
        assert!(
            v["msg"].as_str().unwrap().contains("arguments file"),
            "{name}: {v}"
        );
        let dir = tempfile::tempdir().unwrap();
        let args = dir.path().join("args");
        std::fs::write(&args, "not json").unwrap();
        let o = Command::new(bin).arg(&args).output().unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert!(
            v["msg"].as_str().unwrap().contains("not valid JSON"),
            "{name}: {v}"
        );
        assert_eq!(stdout(&o).lines().count(), 1);
    }
}

// ---- ipmi_power against OpenIPMI's ipmi_sim ------------------------------------------------

const BMC_USER: &str = "admin";

/// The shared simulator (tests/common/ipmi_sim.rs) with one admin account whose password is
/// random, so that leak checks cannot match anything else.
struct Sim {
    bmc: IpmiSim,
    port: u16,
    password: String,
}

impl Sim {
    fn start() -> Sim {
        // at most 20 bytes (IPMI 2.0)
        let password = format!("Bmc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let bmc = IpmiSim::start(&[(BMC_USER, &password, "admin")]);
        Sim {
            port: bmc.port,
            bmc,
            password,
        }
    }

    fn file(&self, name: &str) -> Option<String> {
        self.bmc.file(name)
    }

    fn set_calls(&self) -> Vec<String> {
        self.bmc
            .calls()
            .into_iter()
            .filter(|l| l.starts_with("set "))
            .collect()
    }

    /// `ipmitool -I lanplus -C 3 …` against this simulator; its stdout.
    fn ipmitool(&self, args: &[&str]) -> String {
        self.bmc.ipmitool((BMC_USER, &self.password), args)
    }
}

#[test]
fn ipmi_power_switches_the_simulator_and_ipmitool_agrees() {
    let lab = Lab::new();
    let sim = Sim::start();
    let t = tasks(
        "- name: power
  ipmi_power:
    user: admin
    password: \"{{ bmc_password }}\"
    state: \"{{ st | default('status') }}\"
    bootdev: \"{{ boot | default(omit) }}\"
    persistent: \"{{ persist | default(false) }}\"
",
    );
    let port = format!("bmc_port={}", sim.port);
    let pw = format!("bmc_password={}", sim.password);
    let play = |extra: &[&str]| {
        let mut a = vec!["-e", &port, "-e", &pw];
        a.extend_from_slice(extra);
        lab.play("power", &t, &a)
    };

    let p = play(&[]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}{}", p.stdout, p.stderr);
    assert_eq!(p.task("power")["power"], "off");
    assert_eq!(p.task("power")["sent"], Value::Null);

    // check mode queries, never switches
    let p = play(&["--check", "--diff", "-e", "st=on", "-e", "boot=pxe"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    let r = p.task("power");
    assert_eq!(r["sent"], "on");
    assert_eq!(r["diff"]["before"]["power"], "off");
    assert_eq!(r["diff"]["after"]["power"], "on");
    assert_eq!(r["diff"]["after"]["bootdev"]["device"], "pxe");
    assert!(sim.set_calls().is_empty(), "{:?}", sim.set_calls());
    assert!(sim
        .ipmitool(&["chassis", "power", "status"])
        .contains("is off"));

    // PXE boot, then power on: ipmitool and the chassis agree
    let p = play(&["--diff", "-e", "st=on", "-e", "boot=pxe"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}{}", p.stdout, p.stderr);
    let r = p.task("power");
    assert_eq!(
        (r["power"].as_str(), r["power_before"].as_str()),
        (Some("on"), Some("off"))
    );
    assert_eq!(r["bootdev"]["device"], "pxe");
    assert!(sim
        .ipmitool(&["chassis", "power", "status"])
        .contains("is on"));
    assert!(sim
        .ipmitool(&["chassis", "bootparam", "get", "5"])
        .contains("Force PXE"));
    assert_eq!(sim.set_calls(), ["set boot pxe", "set power 1"]);
    assert_eq!(sim.file("power").as_deref(), Some("1"));

    // on when on: nothing sent
    let p = play(&["-e", "st=on"]);
    assert_eq!((p.rc, p.changed()), (0, 0), "not idempotent: {}", p.stdout);
    assert_eq!(sim.set_calls().len(), 2);

    // disk, persistent; then off; off again changes nothing
    let p = play(&["-e", "boot=disk", "-e", "persist=true"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert!(sim
        .ipmitool(&["chassis", "bootparam", "get", "5"])
        .contains("Force Boot from default Hard-Drive"));
    let p = play(&["-e", "st=off"]);
    assert_eq!((p.rc, p.changed()), (0, 1), "{}", p.stdout);
    assert!(sim
        .ipmitool(&["chassis", "power", "status"])
        .contains("is off"));
    let p = play(&["-e", "st=off"]);
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);
    // cycle of an off node powers it on
    let p = play(&["-e", "st=cycle"]);
    assert_eq!(p.task("power")["sent"], "on");
    assert!(sim
        .ipmitool(&["chassis", "power", "status"])
        .contains("is on"));

    // wrong password: a clear failure, no password anywhere, also at -vvv
    let wrong = format!("Wr0ng-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let wrong_e = format!("bmc_password={wrong}");
    let p = lab.play("power", &t, &["-e", &port, "-e", &wrong_e]);
    assert_eq!(p.rc, 2);
    let r = p.task("power");
    assert_eq!(r["error_kind"], "auth_failed");
    assert!(
        r["msg"]
            .as_str()
            .unwrap()
            .starts_with("authentication failed for user \"admin\""),
        "{r}"
    );
    assert_eq!(
        r["invocation"]["module_args"]["password"],
        "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    );
    let p2 = lab.play_with(
        "power",
        &t,
        &["-vvv", "--diff", "-e", &port, "-e", &wrong_e],
        |c| {
            c.env("ANSIBLE_STDOUT_CALLBACK", "default");
        },
    );
    let p3 = lab.play_with(
        "power",
        &t,
        &["-vvv", "--diff", "-e", &port, "-e", &pw, "-e", "st=on"],
        |c| {
            c.env("ANSIBLE_STDOUT_CALLBACK", "default");
        },
    );
    assert_eq!(p3.rc, 0, "{}", p3.stdout);
    for out in [p.all_output(), p2.all_output(), p3.all_output()] {
        assert!(
            !out.contains(&wrong) && !out.contains(&sim.password),
            "{out}"
        );
    }

    // the credential named in the duffy config instead of user/password
    let cfg = lab.path("with-ipmi.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}ipmi:\n  credentials:\n    rack1: {{user: {BMC_USER}, password: \"{}\"}}\n",
            std::fs::read_to_string(&lab.config).unwrap(),
            sim.password
        ),
    )
    .unwrap();
    let cred = tasks(
        "- name: by credential
  ipmi_power: {credential: rack1, config: \"{{ cfg }}\", state: \"off\"}
- name: unknown credential
  ipmi_power: {credential: rack9, config: \"{{ cfg }}\"}
  ignore_errors: true
",
    );
    let cfg_e = format!("cfg={}", cfg.display());
    let p = lab.play("cred", &cred, &["-e", &port, "-e", &cfg_e]);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.task("by credential")["sent"], "off");
    assert!(sim
        .ipmitool(&["chassis", "power", "status"])
        .contains("is off"));
    assert!(p
        .msg("unknown credential")
        .contains("\"rack9\" is not defined under ipmi.credentials"));
    assert!(!p.all_output().contains(&sim.password));

    // an unreachable BMC: a timeout error within timeout × tries
    let started = std::time::Instant::now();
    let dead = format!("bmc_port={}", free_port());
    let p = lab.play("power", &t, &["-e", &dead, "-e", &pw]);
    assert_eq!(p.rc, 2);
    let kind = p.task("power")["error_kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(kind == "timeout" || kind == "unreachable", "{}", p.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_playbook_with_all_four_modules_changes_nothing_the_second_time() {
    let lab = Lab::new();
    let sim = Sim::start();
    let t = tasks(&format!(
        "- name: tenant
  duffy_tenant: {{name: all4, ssh_key: \"{SSH_KEY}\", node_quota: 4}}
  register: tenant
  no_log: true
- name: nodes
  duffy_node:
    hostname: \"all4-{{{{ item }}}}.example.net\"
    ipaddr: \"127.45.0.{{{{ item }}}}\"
    pool: p1
    initial_state: ready
    data: {{bmc: {{address: 127.0.0.1, credential: rack1}}}}
  loop: [1, 2]
- name: session
  duffy_session: {{tenant: all4, nodes_specs: [{{pool: p1, quantity: 2}}], reuse: true, lifetime: 2h}}
  register: s
- name: power
  ipmi_power: {{user: admin, password: \"{{{{ bmc_password }}}}\", state: \"on\"}}
- name: checks
  ansible.builtin.assert:
    that: [s.hostnames | length == 2]
"
    ));
    let port = format!("bmc_port={}", sim.port);
    let pw = format!("bmc_password={}", sim.password);
    let args = ["-e", port.as_str(), "-e", pw.as_str()];
    let p = lab.play("all4", &t, &args);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.failures(), 0);
    assert_eq!(p.changed(), 4, "{}", p.stdout);
    let p = lab.play("all4", &t, &args);
    assert_eq!(p.rc, 0, "{}{}", p.stdout, p.stderr);
    assert_eq!(p.changed(), 0, "second run changed something: {}", p.stdout);
    let p = lab.play("all4", &t, &[&args[..], &["--check", "--diff"]].concat());
    assert_eq!((p.rc, p.changed()), (0, 0), "{}", p.stdout);
    assert_eq!(lab.count("SELECT count(*) FROM sessions"), 1);
}

/// Issue 12 item 5: the secrets of a node's `data` (set by anyone, at any depth) are in no
/// output of `duffy_node` or `duffy_session` (JSON callback with `--diff`, default at `-vvv`).
#[test]
fn node_data_secrets_are_in_no_module_output() {
    let lab = Lab::new();
    create_tenant(&lab.config, "ci-team", &[]);
    lab.db.exec(
        r#"INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data) VALUES
           ('s1.example.net', '127.45.0.1', 'ready', 'p2', false,
            '{"ipmi": {"address": "10.9.0.1", "password": "IPMI-S3CRET-1"},
              "provision": {"private_key": "PROV-S3CRET-2", "ec2_instance_id": "i-0abc"},
              "secrets": {"db": "NESTED-S3CRET-3"}, "list": [{"Passwd": "LIST-S3CRET-4"}]}')"#,
    );
    let t = tasks(
        "- name: change the node
  duffy_node:
    hostname: s1.example.net
    comment: touched
    data: {vault: {tokens: [ARG-S3CRET-5, ARG-S3CRET-6]}, bmc: {password: 271828}}
- name: session over the database
  duffy_session:
    tenant: ci-team
    nodes_specs: [{pool: p2, quantity: 1}]
    reuse: true
",
    );
    let p1 = lab.play("secrets", &t, &["--diff"]);
    assert_eq!(p1.rc, 0, "{}{}", p1.stdout, p1.stderr);
    assert_eq!(p1.task("change the node")["changed"], true);
    let node = &p1.task("change the node")["node"]["data"];
    assert_eq!(node["ipmi"]["address"], "10.9.0.1", "{node}");
    assert_eq!(node["provision"]["ec2_instance_id"], "i-0abc", "{node}");
    assert_eq!(
        p1.task("session over the database")["session"]["nodes"][0]["data"]["ipmi"]["address"],
        "10.9.0.1"
    );
    let p2 = lab.play_with("secrets", &t, &["-vvv", "--diff"], |c| {
        c.env("ANSIBLE_STDOUT_CALLBACK", "default");
    });
    assert_eq!(p2.rc, 0, "{}{}", p2.stdout, p2.stderr);
    for (run, p) in [("json", &p1), ("-vvv", &p2)] {
        let all = p.all_output();
        assert!(
            !all.contains("S3CRET"),
            "{run} output leaks node data secrets:\n{all}"
        );
        assert!(
            !all.contains("271828"),
            "{run} output leaks a numeric password:\n{all}"
        );
    }
    // stored as given
    assert_eq!(
        lab.one("SELECT data->'vault'->'tokens'->>1 FROM nodes WHERE hostname = 's1.example.net'")
            .as_deref(),
        Some("ARG-S3CRET-6")
    );
}
