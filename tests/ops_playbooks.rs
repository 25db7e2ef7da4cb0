//! The operators' playbooks `playbooks/refill.yml` and `playbooks/teardown.yml` under a real
//! ansible-core (`.ci/ansible-venv.sh`, never skipped), against a throw-away database per test:
//! refill runs the real `duffy scheduler --once` (pools with trivial local provision/deprovision
//! playbooks in a temporary topdir, as `tests/scheduler.rs` does), teardown runs on the hosts of
//! the real dynamic inventory (`inventory/duffy.sh`) with the test build's `duffy_node` module.
//!
//! Covered: refill brings only the asked pools to their level, is `changed=0` on a second run,
//! writes nothing in check mode and fails with the scheduler's message (unknown pool, failing
//! provision playbook); teardown refuses to run without a limit, moves exactly the selected
//! node to `deprovisioning` (the others untouched) and — with `kick`/`wait` — through the
//! scheduler's deprovision path to `done` while the pool is refilled, writes nothing in check
//! mode, refuses a node of an active session (and with it the whole run) unless `force=true`.
//! Also: every example pool config in `etc/pools/` passes `duffy config check`, and the EC2
//! playbooks have the structure the scheduler's contract needs (amazon.aws is not installed
//! here: they were run by hand against moto, see `playbooks/README.md`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use duffy::alloc::{self, NodesSpec};
use duffy::tenant::{self, NewTenant};
use serde_json::Value;

/// Module binaries of this build, put into the test's library folder.
const MODULES: &[(&str, &str)] = &[("duffy_node", env!("CARGO_BIN_EXE_duffy_node"))];

/// Reports one result per node with a loopback address (`127.66.<id/256>.<id%256>`).
const PROVISION: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: results, in duffy_in order
      ansible.builtin.set_fact:
        acc: "{{ acc | default([]) + [{'ipaddr': '127.66.' ~ (item.id // 256) ~ '.' ~ (item.id % 256), 'hostname': 'n' ~ item.id ~ '.' ~ pool_name ~ '.test'}] }}"
      loop: "{{ duffy_in.nodes }}"
    - name: report
      set_fact:
        duffy_out:
          nodes: "{{ acc }}"
"#;

/// Echoes every node's provision data: all nodes torn down.
const DEPROVISION: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: report
      set_fact:
        duffy_out:
          nodes: "{{ duffy_in.nodes | map(attribute='data') | map(attribute='provision') | list }}"
"#;

const FAIL: &str = r#"- hosts: localhost
  gather_facts: false
  tasks:
    - name: break
      ansible.builtin.fail:
        msg: "boom for {{ duffy_in.nodes | length }} node(s)"
"#;

/// One test's world: database, config, topdir, library, ansible.cfg, copies of the playbooks.
struct Ops {
    dir: tempfile::TempDir,
    db: TestDb,
    config: PathBuf,
}

/// One `ansible-playbook` run (JSON stdout callback).
struct Played {
    rc: i32,
    doc: Value,
    out: String,
}

impl Played {
    fn stat(&self, host: &str, what: &str) -> i64 {
        self.doc["stats"][host][what].as_i64().unwrap_or(-1)
    }
    /// Results of task `name` per host.
    fn task(&self, name: &str) -> Value {
        for play in self.doc["plays"].as_array().into_iter().flatten() {
            for t in play["tasks"].as_array().into_iter().flatten() {
                if t["task"]["name"] == name {
                    return t["hosts"].clone();
                }
            }
        }
        Value::Null
    }
}

impl Ops {
    fn new() -> Ops {
        let db = TestDb::migrated();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in ["top", "library", "pb", "home", "logs"] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        for (name, text) in [
            ("provision.yml", PROVISION),
            ("deprovision.yml", DEPROVISION),
            ("fail.yml", FAIL),
        ] {
            std::fs::write(p.join("top").join(name), text).unwrap();
        }
        for (name, bin) in MODULES {
            std::os::unix::fs::symlink(bin, p.join("library").join(name)).unwrap();
        }
        // the playbooks under test, copied so that a `playbooks/library` holding older
        // release builds of the modules (modules/install.sh) cannot shadow this build's
        for f in ["refill.yml", "teardown.yml"] {
            std::fs::copy(repo().join("playbooks").join(f), p.join("pb").join(f)).unwrap();
        }
        let top = p.join("top").display().to_string();
        let config = p.join("duffy.yaml");
        std::fs::write(
            &config,
            format!(
                "database:\n  sqlalchemy:\n    sync_url: {url}\n{DEFAULTS_YAML}\
                 scheduler:\n  ansible-playbook: {ap}\n  job-log-dir: {logs}\n  state-dir: {state}\n  fill-interval: 1h\n\
                 \x20 expire-interval: 1h\n  retry-delay: 1h\n  max-attempts: 2\n  playbook-timeout: 120\n\
                 nodepools:\n  abstract:\n    t:\n      contextualize: none\n      mechanism:\n\
                 \x20       type: ansible\n        ansible:\n          topdir: {top}\n\
                 \x20         extra-vars: {{pool_name: \"{{{{ name }}}}\"}}\n\
                 \x20         provision: {{playbook: provision.yml}}\n\
                 \x20         deprovision: {{playbook: deprovision.yml}}\n\
                 \x20 concrete:\n    pa: {{extends: t, fill-level: 2}}\n    pb: {{extends: t, fill-level: 1}}\n\
                 \x20   pf:\n      extends: t\n      fill-level: 1\n\
                 \x20     mechanism: {{ansible: {{provision: {{playbook: fail.yml}}}}}}\n",
                url = db.url,
                ap = ansible_bin().join("ansible-playbook").display(),
                logs = p.join("logs").display(),
                state = p.join("state").display(),
            ),
        )
        .unwrap();
        std::fs::write(
            p.join("ansible.cfg"),
            ansible_cfg("[inventory]\nunparsed_is_failed = True\n"),
        )
        .unwrap();
        Ops { dir, db, config }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `ansible-playbook <args> pb/<playbook>` with the dynamic inventory, this build's module
    /// and binaries, and `duffy_bin`/`duffy_config` set.
    fn play(&self, playbook: &str, args: &[&str]) -> Played {
        let bin = ansible_bin();
        let home = self.path("home");
        let mut cmd = Command::new(bin.join("ansible-playbook"));
        cmd.current_dir(self.dir.path())
            .env_remove("ANSIBLE_STDOUT_CALLBACK")
            .env_remove("DUFFY_LOG")
            .env_remove("DUFFY_DATABASE_URL")
            .env("ANSIBLE_CONFIG", self.path("ansible.cfg"))
            .env("ANSIBLE_LIBRARY", self.path("library"))
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TMP", home.join("remote-tmp"))
            .env("HOME", &home)
            .env("DUFFY_CONFIG", &self.config)
            .env("DUFFY_INVENTORY_BIN", env!("CARGO_BIN_EXE_duffy-inventory"))
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .arg("-i")
            .arg(repo().join("inventory/duffy.sh"))
            .arg("-e")
            .arg(format!("duffy_bin={}", env!("CARGO_BIN_EXE_duffy")))
            .arg("-e")
            .arg(format!("duffy_config={}", self.config.display()))
            .args(args)
            .arg(self.path("pb").join(playbook));
        let o = cmd.output().expect("run ansible-playbook");
        let out = format!("{}\n{}", stdout(&o), stderr(&o));
        Played {
            rc: o.status.code().unwrap_or(-1),
            doc: serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            out,
        }
    }

    fn q(&self, sql: &str) -> String {
        self.db.rows(sql).join(",")
    }

    /// `state` of every non-retired node of `pool`, in id order.
    fn states(&self, pool: &str) -> String {
        self.q(&format!(
            "SELECT state::text FROM nodes WHERE pool = '{pool}' AND retired_at IS NULL ORDER BY id"
        ))
    }

    /// A snapshot of everything teardown and refill may write.
    fn snapshot(&self) -> String {
        self.q(
            "SELECT (SELECT string_agg(id || ':' || state || ':' || coalesce(pool, '-'), ' ' ORDER BY id) FROM nodes)
             || ' | ' || (SELECT count(*) FROM duffy_node_history)
             || ' | ' || (SELECT count(*) FROM duffy_jobs)
             || ' | ' || (SELECT count(*) FROM duffy_audit_log)",
        )
    }

    /// `duffy scheduler --once` (all pools but the failing one).
    fn fill(&self) {
        let o = duffy(
            Some(&self.config),
            &["scheduler", "--once", "--pool", "pa", "--pool", "pb"],
        );
        assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    }

    /// Hostname of a ready node of `pool` (the first by id).
    fn ready_host(&self, pool: &str) -> String {
        self.q(&format!(
            "SELECT hostname FROM nodes WHERE pool = '{pool}' AND state = 'ready' ORDER BY id LIMIT 1"
        ))
    }

    /// A session of one node of `pool` for a new tenant; returns the node's hostname.
    fn allocate(&self, pool: &str) -> String {
        let path = self.config.clone();
        let url = self.db.url.clone();
        let pool = pool.to_string();
        let session = std::thread::spawn(move || {
            duffy::db::block_on(async move {
                let cfg = duffy::config::load_from(&[&path]).unwrap();
                let db = duffy::db::Db::connect(&url, 2).await.unwrap();
                let (t, _) = tenant::create(
                    &db,
                    &cfg.defaults,
                    &NewTenant {
                        name: "ci1".into(),
                        ssh_key: SSH_KEY.into(),
                        is_admin: false,
                        node_quota: None,
                        session_lifetime: None,
                        session_lifetime_max: None,
                    },
                    "test",
                )
                .await
                .unwrap();
                alloc::create(&db, &cfg, &t, None, &[NodesSpec { pool, quantity: 1 }])
                    .await
                    .unwrap()
                    .row
                    .id
            })
        })
        .join()
        .unwrap();
        self.q(&format!(
            "SELECT n.hostname FROM nodes n JOIN sessions_nodes sn ON sn.node_id = n.id \
             WHERE sn.session_id = {session}"
        ))
    }
}

#[test]
fn refill_fills_the_asked_pools_to_their_level_then_changes_nothing() {
    let ops = Ops::new();
    // check mode: says what it would run, writes nothing
    let before = ops.snapshot();
    let p = ops.play("refill.yml", &["--check", "-e", "duffy_pools=pa"]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert!(
        p.task("Report")["localhost"]["msg"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("check mode: would run "),
        "{}",
        p.out
    );
    assert_eq!(ops.snapshot(), before, "check mode wrote");

    // only pool pa, to its level
    let p = ops.play("refill.yml", &["-e", "duffy_pools=pa"]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat("localhost", "changed"), 1, "{}", p.out);
    let msg = p.task("Report")["localhost"]["msg"].clone();
    assert!(
        msg[0].as_str().unwrap().contains("nodes provisioned: 2"),
        "{msg}"
    );
    assert_eq!(msg[1], "pool pa: fill-level 2, filled 0 -> 2", "{msg}");
    assert_eq!(msg.as_array().unwrap().len(), 2, "only pa reported: {msg}");
    assert_eq!(ops.states("pa"), "ready,ready");
    assert_eq!(ops.states("pb"), "", "pb was not asked for");

    // again: nothing to do
    let p = ops.play("refill.yml", &["-e", "duffy_pools=pa"]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat("localhost", "changed"), 0, "{}", p.out);
    assert_eq!(
        p.task("Report")["localhost"]["msg"][1],
        "pool pa: fill-level 2, filled 2 -> 2"
    );

    // a list works too, and pb fills
    let p = ops.play("refill.yml", &["-e", r#"{"duffy_pools": ["pa", "pb"]}"#]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat("localhost", "changed"), 1, "{}", p.out);
    assert_eq!(ops.states("pb"), "ready");
    let p = ops.play("refill.yml", &["-e", "duffy_pools=pa,pb"]);
    assert_eq!(p.stat("localhost", "changed"), 0, "{}", p.out);
    assert_eq!(ops.states("pa"), "ready,ready");
}

#[test]
fn refill_fails_with_the_schedulers_message() {
    let ops = Ops::new();
    let p = ops.play("refill.yml", &["-e", "duffy_pools=nope"]);
    assert_ne!(p.rc, 0, "{}", p.out);
    let msg = p.task("Fail when the scheduler could not run")["localhost"]["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("exit 2") && msg.contains("--pool nope: no such concrete pool"),
        "{msg}"
    );

    let p = ops.play("refill.yml", &["-e", "duffy_pools=pf"]);
    assert_ne!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat("localhost", "changed"), 0, "{}", p.out);
    let msg = p.task("Fail when provisioning failed")["localhost"]["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.starts_with("provisioning failed (") && msg.contains("boom for 1 node(s)"),
        "{msg}"
    );
    assert_eq!(ops.states("pf"), "failed");

    let p = ops.play("refill.yml", &["-e", r#"{"duffy_pools": {"pa": 1}}"#]);
    assert_ne!(p.rc, 0, "{}", p.out);
    assert!(
        p.task("Check the variables")["localhost"]["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("duffy_pools"),
        "{}",
        p.out
    );
}

#[test]
fn teardown_takes_exactly_the_selected_node_through_the_scheduler() {
    let ops = Ops::new();
    ops.fill();
    assert_eq!(ops.states("pa"), "ready,ready");
    let target = ops.ready_host("pa");
    let ids = |pool: &str| {
        ops.q(&format!(
            "SELECT id FROM nodes WHERE pool = '{pool}' AND retired_at IS NULL ORDER BY id"
        ))
    };
    let (pa_before, pb_before) = (ids("pa"), ids("pb"));

    // no selection: refused, nothing written
    let before = ops.snapshot();
    let p = ops.play("teardown.yml", &[]);
    assert_ne!(p.rc, 0, "{}", p.out);
    assert!(
        p.out.contains("refusing to take every node out of service"),
        "{}",
        p.out
    );
    assert_eq!(ops.snapshot(), before);

    // check mode: the transition is shown, not made
    let p = ops.play("teardown.yml", &["-l", &target, "--check", "--diff"]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat(&target, "changed"), 1, "{}", p.out);
    let r = &p.task("Send the node to deprovisioning")[&target];
    assert_eq!(r["diff"]["after"]["state"], "deprovisioning", "{r}");
    assert_eq!(ops.snapshot(), before, "check mode wrote");

    // the real thing: only that node leaves
    let p = ops.play(
        "teardown.yml",
        &["-l", &target, "-e", "reason=\"disk errors\""],
    );
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat(&target, "changed"), 1, "{}", p.out);
    assert_eq!(
        ops.q(&format!(
            "SELECT state::text FROM nodes WHERE hostname = '{target}'"
        )),
        "deprovisioning"
    );
    assert_eq!(
        ops.q(&format!(
            "SELECT h.actor || ':' || h.reason FROM duffy_node_history h JOIN nodes n ON n.id = h.node_id \
             WHERE n.hostname = '{target}' AND h.to_state = 'deprovisioning'"
        )),
        "operator:disk errors"
    );
    assert_eq!(ids("pa"), pa_before, "the pool's rows");
    assert_eq!(
        ops.q("SELECT count(*) FROM nodes WHERE state = 'ready'"),
        "2",
        "the other pa node and the pb node are untouched"
    );
    assert_eq!(ids("pb"), pb_before);

    // the scheduler's deprovision path finishes it, and refills the pool
    let other = ops.ready_host("pb");
    let p = ops.play(
        "teardown.yml",
        &["-l", &other, "-e", "kick=true", "-e", "wait=true"],
    );
    assert_eq!(p.rc, 0, "{}", p.out);
    let report = p.task("Report")[&other]["msg"].clone();
    assert!(
        report
            .as_str()
            .unwrap()
            .ends_with(": ready -> deprovisioning -> done"),
        "{report}"
    );
    assert_eq!(
        ops.q(&format!(
            "SELECT state || ':' || (retired_at IS NOT NULL) FROM nodes WHERE hostname = '{other}' ORDER BY id LIMIT 1"
        )),
        "done:true"
    );
    assert_eq!(ops.states("pb"), "ready", "pb refilled by the same pass");
    // the kick ran pb only: the first target waits for the daemon's next sweep
    assert_eq!(
        ops.q(&format!(
            "SELECT state::text FROM nodes WHERE hostname = '{target}'"
        )),
        "deprovisioning"
    );
    ops.fill();
    assert_eq!(
        ops.q(&format!(
            "SELECT state::text FROM nodes WHERE hostname = '{target}' ORDER BY id LIMIT 1"
        )),
        "done"
    );
    assert_eq!(ops.states("pa"), "ready,ready");
}

#[test]
fn teardown_refuses_a_node_of_an_active_session_unless_forced() {
    let ops = Ops::new();
    ops.fill();
    let taken = ops.allocate("pa");
    let free = ops.ready_host("pa");
    assert!(!taken.is_empty() && !free.is_empty() && taken != free);
    let state = |h: &str| {
        ops.q(&format!(
            "SELECT state::text FROM nodes WHERE hostname = '{h}'"
        ))
    };
    assert_eq!(state(&taken), "deployed");

    // the whole pool selected: one refusal stops the run before any change
    let before = ops.snapshot();
    let p = ops.play("teardown.yml", &["-l", "pool_pa"]);
    assert_ne!(p.rc, 0, "{}", p.out);
    let refusal = p
        .task("Refuse nodes of active sessions (force=true takes them) and nodes in flight")
        [&taken]["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        refusal.contains("is deployed in session")
            && refusal.contains("of tenant ci1")
            && refusal.contains("-e force=true"),
        "{refusal}"
    );
    assert_eq!(ops.snapshot(), before);
    assert_eq!(state(&free), "ready");

    // check mode with force: shown, not written
    let p = ops.play(
        "teardown.yml",
        &["-l", &taken, "-e", "force=true", "--check"],
    );
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(p.stat(&taken, "changed"), 1, "{}", p.out);
    assert_eq!(ops.snapshot(), before);

    // forced
    let p = ops.play("teardown.yml", &["-l", &taken, "-e", "force=yes"]);
    assert_eq!(p.rc, 0, "{}", p.out);
    assert_eq!(state(&taken), "deprovisioning");
    assert_eq!(state(&free), "ready");

    // a bad variable is refused by name
    let p = ops.play("teardown.yml", &["-l", &free, "-e", "wait=maybe"]);
    assert_ne!(p.rc, 0, "{}", p.out);
    assert!(
        p.out.contains("force, wait and kick are booleans"),
        "{}",
        p.out
    );
    assert_eq!(state(&free), "ready");
}

#[test]
fn example_pool_configs_pass_config_check() {
    let dir = repo().join("etc/pools");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let check = |extra: &Path| {
        let o = duffy_cmd(None, &["config", "check"])
            .arg("-c")
            .arg(repo().join("etc/duffy.yaml"))
            .arg("-c")
            .arg(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}{}",
            extra.display(),
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    };
    for f in &files {
        check(f);
    }
    // all of them together (a config directory merges them in name order)
    let all = check(&dir);
    let pools = all
        .lines()
        .find_map(|l| l.strip_prefix("Concrete pools: "))
        .unwrap_or_default()
        .to_string();
    for p in [
        "virt-ec2-t2-centos-9s-x86_64",
        "virt-ec2-t2-centos-10s-x86_64",
        "virt-ec2-c6g-centos-9s-aarch64",
        "virt-ec2-c6g-centos-10s-aarch64",
        "metal-ec2-c5n-centos-9s-x86_64",
        "metal-ec2-c5n-centos-10s-x86_64",
        "virtual-centos8stream-x86_64",
        "virtual-centos9stream-x86_64-small",
        "physical-centos8stream-x86_64",
        "physical-centos9stream-x86_64",
    ] {
        assert!(pools.split(", ").any(|x| x == p), "{p} not in {pools}");
    }
}

/// Every task of `playbook` as (name, module key), from the YAML.
fn tasks(playbook: &str) -> Vec<(String, String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(repo().join("playbooks").join(playbook)).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let plays = doc.as_sequence().expect("a list of plays");
    assert_eq!(plays.len(), 1, "{playbook}");
    let play = &plays[0];
    assert_eq!(play["hosts"], "localhost", "{playbook}");
    assert_eq!(play["gather_facts"], false, "{playbook}");
    let keywords = [
        "name",
        "register",
        "loop",
        "loop_control",
        "vars",
        "when",
        "no_log",
        "until",
        "retries",
        "delay",
        "changed_when",
    ];
    // a block's tasks (and its rescue's) count as the play's, in order
    fn flat(ts: &serde_yaml::Value, out: &mut Vec<serde_yaml::Value>) {
        for t in ts.as_sequence().expect("tasks") {
            if t.get("block").is_some() {
                flat(&t["block"], out);
                if let Some(r) = t.get("rescue") {
                    flat(r, out);
                }
            } else {
                out.push(t.clone());
            }
        }
    }
    let mut all = Vec::new();
    flat(&play["tasks"], &mut all);
    all.iter()
        .map(|t| {
            let m = t.as_mapping().expect("task mapping");
            let name = t["name"].as_str().expect("every task named").to_string();
            let modules: Vec<&str> = m
                .keys()
                .filter_map(|k| k.as_str())
                .filter(|k| !keywords.contains(k))
                .collect();
            assert_eq!(modules.len(), 1, "{playbook}: {name}: {modules:?}");
            (name, modules[0].to_string(), t[modules[0]].clone())
        })
        .collect()
}

#[test]
fn ec2_playbooks_follow_the_provision_contract() {
    for playbook in ["ec2-provision.yml", "ec2-deprovision.yml"] {
        let ts = tasks(playbook);
        // bad pool variables fail first, with one line naming them
        assert_eq!(ts[0].1, "ansible.builtin.assert", "{playbook}");
        assert_eq!(ts[0].2["quiet"], true, "{playbook}");
        // FQCNs, except the duffy_out task: upstream's worker only sees the short `set_fact`
        let (last_name, last_module, last_args) = ts.last().unwrap();
        assert_eq!(last_module, "set_fact", "{playbook}: {last_name}");
        assert!(last_args["duffy_out"]["nodes"].is_string(), "{playbook}");
        for (name, module, args) in &ts[..ts.len() - 1] {
            assert!(
                module.starts_with("ansible.builtin.") || module.starts_with("amazon.aws."),
                "{playbook}: {name}: {module}"
            );
            if module == "amazon.aws.ec2_instance" {
                assert_eq!(args["region"], "{{ aws_ec2_region }}", "{playbook}");
                assert_eq!(args["wait"], true, "{playbook}");
            }
        }
    }
    let prov = tasks("ec2-provision.yml");
    let start = &prov
        .iter()
        .find(|t| t.1 == "amazon.aws.ec2_instance")
        .unwrap()
        .2;
    assert_eq!(start["state"], "running");
    // the tags a retried job finds its instance by
    assert_eq!(
        start["filters"]["tag:DuffyNodeId"],
        "{{ item.id | string }}"
    );
    assert_eq!(start["tags"]["DuffyNodeId"], "{{ item.id | string }}");
    // and the installation's, so that staging never adopts production's (tests/ec2.rs)
    assert_eq!(
        start["filters"]["tag:DuffyInstallation"],
        "{{ ec2_installation }}"
    );
    let collect = &prov
        .iter()
        .find(|t| t.0 == "Collect the instances, in duffy_in order")
        .unwrap()
        .2;
    let entry = collect["ec2_nodes"].as_str().unwrap();
    for key in [
        "'ipaddr'",
        "'hostname'",
        "'ec2_instance_id'",
        "'public_ipaddress'",
    ] {
        assert!(entry.contains(key), "{key} in {entry}");
    }
    let deprov = tasks("ec2-deprovision.yml");
    let stop = &deprov
        .iter()
        .find(|t| t.1 == "amazon.aws.ec2_instance")
        .unwrap()
        .2;
    assert_eq!(stop["state"], "absent");
    assert_eq!(stop["instance_ids"], "{{ ec2_all }}");
}
