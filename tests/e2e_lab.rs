//! End-to-end test of the lab pool (issue #7 item 5), all real: a throw-away PostgreSQL
//! database, `duffy migrate`, `duffy admin create-tenant` with a fresh ed25519 key, `duffy serve`
//! contextualizing with duffy's own fresh key, `duffy scheduler` running the real
//! `playbooks/lab-provision.yml` / `lab-deprovision.yml` (roles/lab_node) under a real
//! ansible-core: every node is a network namespace on a bridge with its own sshd and its own
//! /root.
//!
//! `lab_pool_end_to_end`: the scheduler fills the pool to 2 → `duffy client request-session` →
//! `ssh -i <tenant key> root@<ipaddr>` runs inside the node (its netns, its address, its
//! authorized_keys with duffy's and the tenant's key; the other node refuses the tenant, the
//! host's /root/.ssh/authorized_keys is untouched) → the pool is refilled at once (time printed)
//! → `duffy client retire-session` → the node is torn down (`done`, netns, sshd and node
//! directory gone).
//!
//! `lab_pool_survives_sigkill_mid_provision`: the scheduler is SIGKILLed while lab provision
//! playbooks run (`lab_provision_delay`), restarted, and ends with exactly the 2 nodes ready
//! (the interrupted jobs taken over, none stuck in `provisioning`, no duplicate); an operator's
//! run of lab-deprovision.yml then leaves no namespace, veth, bridge, sshd or node directory.
//!
//! Both run in a fresh machine's view of `/run` (`common::fresh_run_view`, `.ci/fresh-run.sh`):
//! whatever an earlier run or service left there (`/run/sshd`, namespaces) is not seen.
//!
//! Each test has its own name prefix, bridge, /24 subnet and state directory; a Drop guard kills
//! the test's sshds and deletes its namespaces, veths and bridge even when the test fails. Needs
//! root; `.ci/lab-deps.sh` installs openssh-server when missing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const POOL: &str = "lab-e2e";

/// Run a command, return its output (panics if it cannot start).
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(o: &Output, what: &str) -> String {
    if !o.status.success() {
        eprintln!("{what} failed:");
    }
    common::ok(o)
}

/// `.ci/lab-deps.sh` (idempotent): sshd, ssh, ip, unshare on a bare machine.
fn lab_deps() {
    let o = run(Command::new("bash").arg(repo().join(".ci/lab-deps.sh")));
    ok(&o, ".ci/lab-deps.sh");
}

/// Third octets of 10.231.X.0/24 taken by tests of this process.
static SUBNETS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The test's names and addresses, and the Drop guard that removes whatever of them exists.
struct Net {
    prefix: String,
    bridge: String,
    subnet: String,
    state: PathBuf,
}

impl Net {
    fn new(state: PathBuf) -> Net {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("dl{}", &hex[..4]);
        let bridge = format!("{prefix}br");
        let mut taken = SUBNETS.lock().unwrap();
        let mut x = u8::from_str_radix(&hex[4..6], 16).unwrap();
        let subnet = loop {
            let s = format!("10.231.{x}.0/24");
            let used = stdout(&run(
                Command::new("ip").args(["-o", "-4", "addr", "show", "to", &s])
            ));
            // 10.231.0.0/24 is etc/duffy.yaml's (readme_lab_quick_start)
            if x != 0 && !taken.contains(&x) && used.trim().is_empty() {
                taken.push(x);
                break s;
            }
            x = x.wrapping_add(1);
        };
        Net {
            prefix,
            bridge,
            subnet,
            state,
        }
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// The test's network namespaces.
    fn namespaces(&self) -> BTreeSet<String> {
        let o = run(Command::new("ip").args(["netns", "list"]));
        stdout(&o)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }

    /// The test's links in the host namespace (veth host ends, the bridge).
    fn links(&self) -> BTreeSet<String> {
        let o = run(Command::new("ip").args(["-o", "link", "show"]));
        stdout(&o)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(&self.prefix))
            .collect()
    }

    /// sshd processes of the test's nodes (their config is in the state directory): pid → cmdline.
    fn sshds(&self) -> Vec<(u32, String)> {
        let needle = format!("{}/", self.state.display());
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("sshd") && cmd.contains(&needle) {
                found.push((pid, cmd));
            }
        }
        found
    }

    /// The network namespace a process is in (`ip netns identify`).
    fn netns_of(pid: u32) -> String {
        let o = run(Command::new("ip").args(["netns", "identify", &pid.to_string()]));
        stdout(&o).trim().to_string()
    }

    fn node_dirs(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.state)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kill every process of the test's nodes, delete their namespaces, veths and the bridge.
    fn cleanup(&self) {
        for ns in self.namespaces() {
            let o = run(Command::new("ip").args(["netns", "pids", &ns]));
            for pid in stdout(&o).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        for (pid, _) in self.sshds() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for link in self.links() {
            let ours = link == self.bridge
                || link
                    .strip_prefix(&format!("{}-", self.prefix))
                    .is_some_and(|id| id.chars().all(|c| c.is_ascii_digit()));
            if ours {
                let _ = Command::new("ip")
                    .args(["link", "del", "dev", &link])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A `duffy scheduler` daemon, stopped (SIGTERM, then SIGKILL) on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One end-to-end environment. Fields drop in order: scheduler, server, network, config, DB.
struct E2e {
    sched: Option<Daemon>,
    server: Option<Server>,
    net: Net,
    cfg: TestConfig,
    db: TestDb,
    dir: tempfile::TempDir,
    duffy_pub: String,
    tenant_pub: String,
    tenant_key: PathBuf,
    api_key: String,
    sched_logs: u32,
}

fn keygen(path: &Path, comment: &str) -> String {
    let o = run(Command::new("ssh-keygen").args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        comment,
        "-f",
        path.to_str().unwrap(),
    ]));
    ok(&o, "ssh-keygen");
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

impl E2e {
    /// Database (`duffy migrate`), keys, config with the lab pool, tenant. `extra_vars` are added
    /// to the pool's extra-vars (YAML lines at 12 spaces).
    fn new(fill_level: u32, extra_vars: &str) -> E2e {
        lab_deps();
        let ansible_playbook = ansible_bin().join("ansible-playbook");
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lab-state");
        let net = Net::new(state.clone());
        let duffy_pub = keygen(&dir.path().join("duffy_key"), "duffy@e2e");
        let tenant_pub = keygen(&dir.path().join("tenant_key"), "tenant@e2e");
        let db = TestDb::empty();
        let d = dir.path().display();
        let cfg = TestConfig::new(
            &db.url,
            &format!(
                r#"contextualize:
  identity: {d}/duffy_key
  timeout: 20s
scheduler:
  ansible-playbook: {ap}
  job-log-dir: {d}/jobs
  state-dir: {d}/state
  lease: 4s
  retry-delay: 1s
  max-attempts: 5
  fill-interval: 1h
  expire-interval: 1h
  playbook-timeout: 150s
nodepools:
  concrete:
    {POOL}:
      fill-level: {fill_level}
      contextualize: ssh
      mechanism:
        type: ansible
        ansible:
          topdir: {top}
          extra-vars:
            lab_prefix: {prefix}
            lab_bridge: {bridge}
            lab_subnet: {subnet}
            lab_state_dir: {state}
            lab_duffy_pubkey_file: {d}/duffy_key.pub
{extra_vars}          provision:
            playbook: lab-provision.yml
          deprovision:
            playbook: lab-deprovision.yml
"#,
                ap = ansible_playbook.display(),
                top = repo().join("playbooks").display(),
                prefix = net.prefix,
                bridge = net.bridge,
                subnet = net.subnet,
                state = state.display(),
            ),
        );
        ok(
            &duffy(Some(&cfg.path), &["config", "check"]),
            "config check",
        );
        ok(&duffy(Some(&cfg.path), &["migrate"]), "duffy migrate");
        let o = duffy(
            Some(&cfg.path),
            &["admin", "create-tenant", "tnt", tenant_pub.as_str()],
        );
        let api_key = ok(&o, "create-tenant")
            .trim()
            .strip_prefix("OK: tnt: ")
            .expect("OK: tnt: KEY")
            .to_string();
        E2e {
            sched: None,
            server: None,
            net,
            cfg,
            db,
            tenant_key: dir.path().join("tenant_key"),
            dir,
            duffy_pub,
            tenant_pub,
            api_key,
            sched_logs: 0,
        }
    }

    fn start_scheduler(&mut self) {
        self.sched_logs += 1;
        let log = self
            .dir
            .path()
            .join(format!("scheduler-{}.log", self.sched_logs));
        let f = std::fs::File::create(log).unwrap();
        let child = duffy_cmd(Some(&self.cfg.path), &["scheduler"])
            .env("DUFFY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start duffy scheduler");
        self.sched = Some(Daemon { child });
    }

    fn q(&self, sql: &str) -> Vec<String> {
        self.db.rows(sql)
    }

    fn one(&self, sql: &str) -> String {
        self.db.one(sql)
    }

    /// What went on, for failure messages: nodes, jobs, scheduler logs, the last job logs.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "nodes: {:?}\njobs: {:?}\nnamespaces: {:?}\nsshds: {:?}\n",
            self.q("SELECT id || ' ' || state || ' ' || coalesce(ipaddr, '-') FROM nodes ORDER BY id"),
            self.q("SELECT id || ' ' || kind || ' ' || state || ' attempts=' || attempts || ' ' || coalesce(last_error, '') FROM duffy_jobs ORDER BY id"),
            self.net.namespaces(),
            self.net.sshds(),
        ));
        for i in 1..=self.sched_logs {
            let p = self.dir.path().join(format!("scheduler-{i}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            s.push_str(&format!("--- scheduler-{i}.log (tail)\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        for p in self.q("SELECT log_path FROM duffy_jobs WHERE log_path IS NOT NULL ORDER BY updated_at DESC LIMIT 2") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            s.push_str(&format!("--- {p} (tail)\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Wait until `f` returns `Some`, at most `timeout`.
    fn wait<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > timeout {
                panic!("waited {timeout:?} for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ids of the pool's ready nodes.
    fn ready(&self) -> Vec<String> {
        self.q(&format!(
            "SELECT id FROM nodes WHERE pool = '{POOL}' AND state = 'ready' ORDER BY id"
        ))
    }

    fn wait_ready(&self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait(&format!("{n} ready nodes"), timeout, || {
            let r = self.ready();
            (r.len() == n).then_some(r)
        })
    }

    /// `duffy client … ARGS` as the tenant, against the running server.
    fn client(&self, args: &[&str]) -> Value {
        let url = format!("{}/api/v1", self.server.as_ref().expect("server").url());
        let mut a = vec![
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            &self.api_key,
        ];
        a.extend_from_slice(args);
        let o = duffy(None, &a);
        serde_json::from_str(&ok(&o, &format!("duffy client {args:?}")))
            .expect("JSON from duffy client")
    }

    /// `ssh -i <tenant key> root@ip CMD`.
    fn ssh_tenant(&self, ip: &str, cmd: &str) -> Output {
        run(Command::new("ssh").args([
            "-F",
            "/dev/null",
            "-i",
            self.tenant_key.to_str().unwrap(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            &format!("root@{ip}"),
            cmd,
        ]))
    }

    /// Check a ready node: its name, address, provision data, namespace and sshd.
    fn check_ready_node(&self, id: &str) {
        let row = self.one(&format!(
            "SELECT hostname || ' ' || ipaddr || ' ' || (data->'provision'->>'lab_netns') || ' ' || (data->'provision'->>'lab_bridge') FROM nodes WHERE id = {id}"
        ));
        let ns = self.net.netns_name(id);
        let subnet_start = self.net.subnet.trim_end_matches("0/24");
        let f: Vec<&str> = row.split(' ').collect();
        assert_eq!(f[0], format!("{ns}.duffy.test"), "{row}");
        assert!(
            f[1].starts_with(subnet_start),
            "{row} not in {}",
            self.net.subnet
        );
        assert_eq!(f[2], ns, "{row}");
        assert_eq!(f[3], self.net.bridge, "{row}");
        assert!(self.net.namespaces().contains(&ns), "{ns} missing");
        let sshd: Vec<_> = self
            .net
            .sshds()
            .into_iter()
            .filter(|(_, c)| c.contains(&format!("/{ns}/sshd_config")) && c.contains("listener"))
            .collect();
        assert_eq!(sshd.len(), 1, "sshd of {ns}: {sshd:?}");
        assert_eq!(
            Net::netns_of(sshd[0].0),
            ns,
            "sshd of {ns} in another netns"
        );
    }

    /// Provisioning time of each node from its history (created → ready), for the report.
    fn provisioning_times(&self) -> Vec<String> {
        self.q(
            "SELECT h.node_id || ': ' || round(extract(epoch FROM (r.at - h.at))::numeric, 2) || ' s'
             FROM duffy_node_history h
             JOIN duffy_node_history r ON r.node_id = h.node_id AND r.to_state = 'ready'
               AND r.from_state = 'provisioning'
             WHERE h.from_state IS NULL AND h.to_state = 'provisioning'
             ORDER BY h.node_id",
        )
    }
}

fn host_authorized_keys() -> Option<Vec<u8>> {
    std::fs::read("/root/.ssh/authorized_keys").ok()
}

/// `.ci/fresh-run.sh` inside itself (CI runs the whole suite in it, and the lab tests re-run
/// themselves in it) still sees PostgreSQL's socket: the inner view once bound the outer /run
/// without its submounts, so `/run/postgresql` was empty there (tests/deploy_role.rs failed).
#[test]
fn fresh_run_nests_and_keeps_the_database_socket() {
    let sock = "/run/postgresql/.s.PGSQL.5432";
    assert!(
        Path::new(sock).exists(),
        "{sock}: the machine's PostgreSQL is expected on its Unix socket too"
    );
    let script = repo().join(".ci/fresh-run.sh");
    let o = run(Command::new("bash")
        .arg(&script)
        .arg("bash")
        .arg(&script)
        .args([
            "bash",
            "-c",
            &format!("test -S {sock} && test ! -e /run/sshd && echo inner-ok"),
        ]));
    assert!(
        stdout(&o).contains("inner-ok"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

#[test]
fn lab_pool_end_to_end() {
    if !fresh_run_view("lab_pool_end_to_end") {
        return;
    }
    let host_keys_before = host_authorized_keys();
    let mut e = E2e::new(2, "");
    e.server = Some(Server::start(&e.cfg.path));
    e.start_scheduler();

    // the scheduler fills the pool with two lab nodes
    let ready = e.wait_ready(2, Duration::from_secs(180));
    for id in &ready {
        e.check_ready_node(id);
    }
    assert_eq!(e.net.namespaces().len(), 2);
    assert!(e.net.links().contains(&e.net.bridge));

    // a tenant takes one
    let v = e.client(&["request-session", &format!("pool={POOL},quantity=1")]);
    let t_alloc = Instant::now();
    let session = v["session"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no session: {v}\n{}", e.diagnostics()))
        .to_string();
    let nodes = v["session"]["nodes"].as_array().expect("nodes").clone();
    assert_eq!(nodes.len(), 1, "{v}");
    let ip = nodes[0]["ipaddr"].as_str().unwrap().to_string();
    let node_id = nodes[0]["id"].as_i64().unwrap().to_string();
    let ns = e.net.netns_name(&node_id);
    assert_eq!(nodes[0]["hostname"], format!("{ns}.duffy.test"));
    assert_eq!(
        e.one(&format!("SELECT state FROM nodes WHERE id = {node_id}")),
        "deployed"
    );

    // ssh with the tenant's key runs inside the node: its netns, its address, its /root
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let o = e.ssh_tenant(
        &ip,
        "hostname; readlink /proc/self/ns/net; ip -o -4 addr show dev eth0; echo ---; cat /root/.ssh/authorized_keys",
    );
    let out = ok(&o, "ssh into the node with the tenant key");
    let (head, keys) = out.split_once("---\n").expect("marker line");
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], format!("{ns}.duffy.test"), "{out}");
    assert_ne!(
        lines[1],
        host_net.to_string_lossy(),
        "same netns as the host: {out}"
    );
    assert!(lines[2].contains(&format!("inet {ip}/24")), "{out}");
    assert_eq!(
        keys,
        format!(
            "{}\n{}\n{}\n",
            e.duffy_pub,
            duffy::contextualize::MARKER,
            e.tenant_pub
        ),
        "the node's authorized_keys"
    );
    // the node's /root is its own: the host's authorized_keys is untouched, and the other
    // (unallocated) node does not know the tenant's key
    assert_eq!(host_authorized_keys(), host_keys_before);
    let other = ready.iter().find(|id| **id != node_id).unwrap();
    let other_ip = e.one(&format!("SELECT ipaddr FROM nodes WHERE id = {other}"));
    let o = e.ssh_tenant(&other_ip, "true");
    assert_eq!(
        o.status.code(),
        Some(255),
        "the unallocated node let the tenant in: {}",
        stderr(&o)
    );

    // the pool is refilled at once (NOTIFY from the API), with a new node
    let refilled = e.wait_ready(2, Duration::from_secs(180));
    let t_refill = t_alloc.elapsed();
    assert!(!refilled.contains(&node_id));
    for id in &refilled {
        e.check_ready_node(id);
    }

    // retire: the node is torn down
    let v = e.client(&["retire-session", &session]);
    assert_eq!(v["session"]["active"], Value::Bool(false), "{v}");
    let t_retire = Instant::now();
    e.wait("the retired node done", Duration::from_secs(120), || {
        (e.one(&format!("SELECT state FROM nodes WHERE id = {node_id}")) == "done").then_some(())
    });
    let t_done = t_retire.elapsed();
    assert!(!e.net.namespaces().contains(&ns), "{ns} still there");
    assert!(!e.net.links().contains(&ns), "veth {ns} still there");
    assert!(
        !e.net
            .sshds()
            .iter()
            .any(|(_, c)| c.contains(&format!("/{ns}/"))),
        "sshd of {ns} still running: {:?}",
        e.net.sshds()
    );
    assert!(
        !e.net.node_dirs().contains(&ns),
        "node directory of {ns} still there"
    );
    assert_eq!(e.net.namespaces().len(), 2);
    assert_eq!(e.ready(), refilled, "the pool stays at its fill level");
    let o = e.ssh_tenant(&ip, "true");
    assert_ne!(o.status.code(), Some(0), "the torn-down node still answers");
    assert_eq!(host_authorized_keys(), host_keys_before);

    let new_node = refilled.iter().find(|id| !ready.contains(id)).unwrap();
    let refill_start = e.one(&format!(
        "SELECT round(extract(epoch FROM (n.at - a.at)) * 1000)
         FROM duffy_node_history a, duffy_node_history n
         WHERE a.node_id = {node_id} AND a.to_state = 'deployed'
           AND n.node_id = {new_node} AND n.from_state IS NULL"
    ));
    println!(
        "e2e_lab: allocation -> refill started (new node row) {refill_start} ms after the node was deployed; \
         -> pool back at fill level 2: {:.2} s; retire -> node done: {:.2} s",
        t_refill.as_secs_f64(),
        t_done.as_secs_f64()
    );
    println!(
        "e2e_lab: lab-provision.yml per node (created -> ready): {:?}",
        e.provisioning_times()
    );
}

#[test]
fn lab_pool_survives_sigkill_mid_provision() {
    if !fresh_run_view("lab_pool_survives_sigkill_mid_provision") {
        return;
    }
    let mut e = E2e::new(2, "            lab_provision_delay: 3\n");
    e.start_scheduler();

    // kill -9 the scheduler while a playbook sits in the delay: netns made, sshd not yet
    let victim = e.wait("a node half provisioned", Duration::from_secs(120), || {
        e.q(&format!(
            "SELECT id FROM nodes WHERE pool = '{POOL}' AND state = 'provisioning' ORDER BY id"
        ))
        .into_iter()
        .find(|id| {
            let ns = e.net.netns_name(id);
            e.net.namespaces().contains(&ns)
                && !e
                    .net
                    .sshds()
                    .iter()
                    .any(|(_, c)| c.contains(&format!("/{ns}/")))
        })
    });
    e.sched.as_mut().unwrap().kill9();
    assert_eq!(
        e.one(&format!("SELECT state FROM nodes WHERE id = {victim}")),
        "provisioning"
    );
    assert_eq!(
        e.one("SELECT count(*) FROM duffy_jobs WHERE kind = 'provision' AND state = 'running'"),
        e.one(&format!(
            "SELECT count(*) FROM nodes WHERE pool = '{POOL}' AND state = 'provisioning'"
        )),
        "interrupted jobs stay running until their lease runs out"
    );

    // restarted: the interrupted jobs are taken over, every node ends ready, none is lost
    e.start_scheduler();
    let ready = e.wait_ready(2, Duration::from_secs(180));
    assert_eq!(
        e.one("SELECT count(*) FROM nodes"),
        "2",
        "no node created twice: {}",
        e.diagnostics()
    );
    assert_eq!(
        e.one("SELECT count(*) FROM nodes WHERE state IN ('provisioning', 'failed')"),
        "0"
    );
    let attempts = e.one(&format!(
        "SELECT max(attempts) FROM duffy_jobs WHERE kind = 'provision' AND {victim} = ANY(node_ids)"
    ));
    assert!(
        attempts.parse::<i32>().unwrap() >= 2,
        "the interrupted job was not taken over: attempts {attempts}\n{}",
        e.diagnostics()
    );
    for id in &ready {
        e.check_ready_node(id);
    }
    let want: BTreeSet<String> = ready.iter().map(|id| e.net.netns_name(id)).collect();
    assert_eq!(e.net.namespaces(), want, "leaked namespaces");
    assert_eq!(
        e.net
            .sshds()
            .iter()
            .filter(|(_, c)| c.contains("listener"))
            .count(),
        2
    );
    e.sched.as_mut().unwrap().stop();

    // an operator tears the nodes down by hand: nothing of the test is left on the host
    let nodes: Vec<Value> = e
        .q(&format!(
            "SELECT json_build_object('id', id, 'hostname', hostname, 'ipaddr', ipaddr, 'data', data)::text FROM nodes WHERE pool = '{POOL}' ORDER BY id"
        ))
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    let vars = serde_json::json!({
        "duffy_in": {"nodes": nodes},
        "lab_state_dir": e.net.state,
    });
    let vars_file = e.dir.path().join("deprovision-vars.json");
    std::fs::write(&vars_file, vars.to_string()).unwrap();
    let o = run(Command::new(ansible_bin().join("ansible-playbook"))
        .current_dir(repo().join("playbooks"))
        .env("HOME", e.dir.path())
        .env("ANSIBLE_NOCOLOR", "1")
        .args(["-i", "localhost,", "-c", "local", "-e"])
        .arg(format!("@{}", vars_file.display()))
        .arg("lab-deprovision.yml"));
    let out = ok(&o, "lab-deprovision.yml by hand");
    assert!(out.contains("failed=0"), "{out}");
    assert_eq!(e.net.namespaces(), BTreeSet::new(), "namespaces left");
    assert_eq!(e.net.links(), BTreeSet::new(), "links (veths, bridge) left");
    assert_eq!(e.net.sshds(), vec![], "sshds left");
    assert_eq!(e.net.node_dirs(), BTreeSet::new(), "node directories left");
    println!(
        "e2e_lab: lab-provision.yml per node after the SIGKILL (created -> ready, delay 3 s included): {:?}",
        e.provisioning_times()
    );
}

#[test]
fn example_config_lab_pool_runs_the_lab_playbooks() {
    let path = repo().join("etc/duffy.yaml");
    let o = duffy(Some(&path), &["config", "check"]);
    ok(&o, "duffy config check -c etc/duffy.yaml");
    let cfg = duffy::config::load_from(&[&path]).unwrap();
    assert!(
        cfg.contextualize.identity.is_some(),
        "contextualize.identity"
    );
    let pool = cfg.pool("lab-centos-9s-x86_64").expect("the lab pool");
    assert_eq!(pool.contextualize, duffy::config::Contextualize::Ssh);
    let mech = pool.mechanism.as_ref().unwrap();
    let top = repo().join(mech.topdir.as_ref().expect("topdir"));
    for p in [&mech.provision, &mech.deprovision].map(|p| p.as_ref().unwrap()) {
        assert!(p.playbook.starts_with("lab-"), "{}", p.playbook);
        assert!(top.join(&p.playbook).is_file(), "{}", p.playbook);
    }
    for k in ["lab_bridge", "lab_subnet", "lab_duffy_pubkey_file"] {
        assert!(
            mech.extra_vars.contains_key(k),
            "extra-vars {k}: {:?}",
            mech.extra_vars
        );
    }
}

/// The block of README.md between `<!-- lab-quick-start… -->` and `<!-- /lab-quick-start -->`,
/// unindented.
fn readme_quick_start() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("<!-- lab-quick-start")
        .expect("README.md: <!-- lab-quick-start marker");
    let end = readme
        .find("<!-- /lab-quick-start -->")
        .expect("README.md: <!-- /lab-quick-start --> marker");
    let block = &readme[start..end];
    let block = &block[block.find('\n').unwrap() + 1..];
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.strip_prefix("      ")
                .unwrap_or_else(|| panic!("README quick start: not a code line: {l:?}"))
                .to_string()
        })
        .collect()
}

/// Kills a process group (TERM, then KILL after 10 s) on drop.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let g = format!("-{}", self.0);
        let _ = Command::new("kill").args(["-TERM", "--", &g]).status();
        for _ in 0..100 {
            let alive = Command::new("kill")
                .args(["-0", "--", &g])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &g]).status();
    }
}

/// README.md's lab quick start, typed as written on a fresh machine: the block between its
/// `lab-quick-start` markers runs in bash (`set -e -o pipefail`), in the repository, in a fresh
/// machine's view of `/run` with throw-away overlays on `/etc`, `/root` and `/var/lib` (it
/// writes `/etc/duffy/ssh`, `~/.ssh` and the lab's state), against a throw-away database
/// (`DUFFY_DATABASE_URL`). Two substitutions only: `cargo build --release` is skipped and
/// `./target/release/duffy` is this build's `duffy`. It must end with the node's hostname
/// printed by `ssh root@<ipaddr>` inside a node of the tenant's session.
#[test]
fn readme_lab_quick_start() {
    use std::os::unix::process::CommandExt;
    // installs before the overlays (dpkg's records must not go into a throw-away layer)
    lab_deps();
    ansible_bin();
    if !fresh_run_view_with("readme_lab_quick_start", &["/etc", "/root", "/var/lib"]) {
        return;
    }
    let lines = readme_quick_start();
    assert!(
        lines.iter().any(|l| l == "cargo build --release"),
        "the quick start builds with `cargo build --release`: {lines:#?}"
    );
    let bin = env!("CARGO_BIN_EXE_duffy");
    let script: Vec<String> = lines
        .iter()
        .filter(|l| *l != "cargo build --release")
        .map(|l| l.replace("./target/release/duffy", bin))
        .collect();
    assert!(
        script.iter().all(|l| !l.contains("target/release")),
        "{script:#?}"
    );

    // the example lab pool's names: nothing of them may exist on this machine yet
    let cfg = duffy::config::load_from(&[&repo().join("etc/duffy.yaml")]).unwrap();
    let pool = cfg.pool("lab-centos-9s-x86_64").expect("the lab pool");
    let vars = &pool.mechanism.as_ref().unwrap().extra_vars;
    let var = |k: &str| {
        vars.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("etc/duffy.yaml: extra-vars {k}"))
            .to_string()
    };
    let net = Net {
        prefix: var("lab_prefix"),
        bridge: var("lab_bridge"),
        subnet: var("lab_subnet"),
        state: PathBuf::from(var("lab_state_dir")),
    };
    assert!(
        net.links().is_empty() && net.namespaces().is_empty(),
        "the example lab's bridge {} or nodes exist on this machine: stop that lab first",
        net.bridge
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8080").is_ok(),
        "127.0.0.1:8080 (etc/duffy.yaml's app.port) is taken"
    );

    let db = TestDb::empty();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let t0 = Instant::now();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e -o pipefail\n{}\n", script.join("\n")))
        .current_dir(repo())
        .env("DUFFY_DATABASE_URL", &db.url)
        .env("HOME", "/root")
        .env_remove("DUFFY_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .expect("start bash");
    // serve and scheduler stay in the background: the group goes when the test ends
    let _group = Group(child.id());
    let has_jobs = || {
        db.one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'duffy_jobs'")
            == "1"
    };
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        // a failed playbook is retried with back-off: stop at the first failure, with its reason
        let failed_job = t0.elapsed() > Duration::from_secs(2)
            && has_jobs()
            && db.one("SELECT count(*) FROM duffy_jobs WHERE last_error IS NOT NULL") != "0";
        if failed_job || t0.elapsed() > Duration::from_secs(240) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let stdout = read(&out);
    let report = || {
        format!(
            "stdout:\n{stdout}\nstderr:\n{}\nscheduler.log (tail):\n{}\nnodes: {:?}\njobs: {:?}",
            read(&err),
            read(&repo().join("target/scheduler.log"))
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            db.rows("SELECT id || ' ' || state || ' ' || coalesce(hostname, '-') FROM nodes ORDER BY id"),
            if has_jobs() {
                db.rows("SELECT id || ' ' || kind || ' ' || state || ' ' || coalesce(last_error, '') FROM duffy_jobs ORDER BY id")
            } else {
                vec![]
            },
        )
    };
    assert!(
        status.success(),
        "the README's lab quick start failed ({status}, {:?}):\n{}",
        t0.elapsed(),
        report()
    );
    let hostname = stdout.lines().last().unwrap_or_default().trim().to_string();
    let deployed = db.rows("SELECT hostname FROM nodes WHERE state = 'deployed'");
    assert_eq!(
        deployed,
        vec![hostname.clone()],
        "ssh root@<ipaddr> must print the deployed node's hostname\n{}",
        report()
    );
    assert!(
        hostname.starts_with(&format!("{}-", net.prefix)),
        "{hostname}"
    );
    println!(
        "readme_lab_quick_start: {:?} from the first line to `ssh … hostname` in a node",
        t0.elapsed()
    );
}
