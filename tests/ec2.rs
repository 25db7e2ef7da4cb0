//! The EC2 pools (`playbooks/ec2-*.yml`, `etc/pools/70_nodepools-ec2.yaml`) against moto's EC2
//! server, with the real `amazon.aws` collection, boto3 and ansible-core (`.ci/ec2-venv.sh`).
//!
//! One `moto_server` per test binary on 127.0.0.1 (a free port), shared by the tests; each test
//! has a region of its own (moto keeps regions apart), set up by `tests/ec2/aws.py` with a VPC
//! whose subnet is in 127.0.0.0/8, so the private addresses moto gives the instances are this
//! machine's loopback addresses: the playbooks' SSH wait is exercised against a real sshd the
//! test starts on those addresses (`Sshd`), not skipped. What moto does not do: boot anything,
//! run cloud-init, bill. The SSH contextualization of tenants' keys (duffy → root@ipaddr:22) is
//! not exercised here (the pools use `contextualize: none`); `tests/e2e_lab.rs` covers it.
//!
//! - the playbooks' defects of issue 16, each a test that fails on the old playbooks:
//!   `a_failed_provision_leaves_no_instance_running`, `deprovision_finds_instances_by_their_tags`,
//!   `installations_do_not_adopt_each_others_instances`, `no_public_address_unless_asked`,
//!   `the_ssh_wait_waits_for_the_greeting_and_the_key`;
//! - `shipped_pools_fill_lend_retire_refill`: `duffy serve` + `duffy scheduler` with the shipped
//!   pool file (overridden: endpoint, AMIs, subnet, security group, SSH port and key, fill
//!   levels, `contextualize: none`), t2 (x86_64), c6g (aarch64) and c5n.metal pools: fill,
//!   `duffy client request-session`, quota, retire → terminated → `done` → refilled;
//! - `cloud_errors_fail_cleanly_with_back_off`: AWS's error codes, answered by
//!   `tests/ec2/faulty.py` in front of moto (moto itself never produces them), and an instance
//!   that never becomes reachable, through the scheduler;
//! - `sigkill_mid_provision_leaves_one_instance_per_node`: the scheduler SIGKILLed between
//!   "instance started" and "node recorded";
//! - `reconcile_finds_and_fixes_what_changed_behind_duffys_back`: `duffy reconcile [--apply]`
//!   with `playbooks/ec2-reconcile.yml`; `the_scheduler_reconciles_periodically_when_asked`:
//!   `scheduler.reconcile-interval`.
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The two venvs of `.ci/ec2-venv.sh`: (ansible-core + boto3 + amazon.aws, moto).
struct Venvs {
    ec2: PathBuf,
    moto: PathBuf,
}

fn venvs() -> &'static Venvs {
    static V: OnceLock<Venvs> = OnceLock::new();
    V.get_or_init(|| {
        let path = |var: &str, dir: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join(dir))
        };
        let v = Venvs {
            ec2: path("DUFFY_EC2_VENV", ".venv-ec2"),
            moto: path("DUFFY_MOTO_VENV", ".venv-moto"),
        };
        let o = Command::new("bash")
            .arg(repo().join(".ci/ec2-venv.sh"))
            .env("DUFFY_EC2_VENV", &v.ec2)
            .env("DUFFY_MOTO_VENV", &v.moto)
            .output()
            .expect("run .ci/ec2-venv.sh");
        assert!(
            o.status.success(),
            ".ci/ec2-venv.sh failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        v
    })
}

/// The moto server of this test binary: its endpoint URL.
fn moto() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let bin = venvs().moto.join("bin/moto_server");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("duffy-ec2-moto-{port}.log"));
        // started by a thread that lives as long as the process: PR_SET_PDEATHSIG fires when the
        // *thread* that forked ends, and the server must go with the test binary, not the test
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&log).unwrap());
            // SAFETY: prctl is async-signal-safe
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("start moto_server");
            tx.send(child.id()).unwrap();
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("http://127.0.0.1:{port}")
    })
}

/// One test's region of the moto server, with a VPC on 127.77.`net`.0/24.
struct Region {
    name: &'static str,
    net: u8,
    subnet: String,
    security_group: String,
    amis: Value,
}

impl Region {
    fn new(name: &'static str, net: u8) -> Region {
        let v = aws(name, &["setup", &format!("127.77.{net}.0/24")]);
        Region {
            name,
            net,
            subnet: v["subnet"].as_str().unwrap().into(),
            security_group: v["security_group"].as_str().unwrap().into(),
            amis: v["amis"].clone(),
        }
    }

    fn ami(&self, which: &str) -> String {
        self.amis[which].as_str().unwrap().to_string()
    }

    /// Every instance of the region (`tests/ec2/aws.py instances`).
    fn instances(&self) -> Vec<Value> {
        aws(self.name, &["instances"]).as_array().unwrap().clone()
    }

    /// The instances not terminated, tagged `DuffyNodeId` = `node`.
    fn live_for(&self, node: &str) -> Vec<Value> {
        self.instances()
            .into_iter()
            .filter(|i| i["state"] != "terminated" && i["state"] != "shutting-down")
            .filter(|i| i["tags"]["DuffyNodeId"] == node)
            .collect()
    }

    fn state_of(&self, id: &str) -> String {
        self.instances()
            .into_iter()
            .find(|i| i["id"] == id)
            .map(|i| i["state"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{id} not in the region"))
    }

    /// The pool variables of a t2 pool in this region (the shipped file's names).
    fn vars(&self, pool: &str) -> Value {
        json!({
            "duffy_pool": pool,
            "aws_ec2_region": self.name,
            "aws_ec2_instance_type": "t2.xlarge",
            "aws_ec2_image_id": self.ami("centos-9s-x86_64"),
            "aws_ec2_keypair": "duffy",
            "aws_ec2_subnets": [self.subnet],
            "aws_ec2_security_groups": [self.security_group],
            "aws_ec2_endpoint_url": moto(),
            "aws_ec2_ssh_timeout": 4,
            "aws_ec2_ssh_poll": 1,
        })
    }
}

/// `tests/ec2/aws.py ENDPOINT REGION ARGS…` → its JSON.
fn aws(region: &str, args: &[&str]) -> Value {
    let o = Command::new(venvs().moto.join("bin/python"))
        .arg(repo().join("tests/ec2/aws.py"))
        .arg(moto())
        .arg(region)
        .args(args)
        .output()
        .expect("run tests/ec2/aws.py");
    serde_json::from_str(&ok(&o)).expect("JSON from aws.py")
}

/// The environment every ansible-playbook run of these tests gets: the collection path and
/// dummy credentials (moto accepts any).
fn ec2_env(cmd: &mut Command) -> &mut Command {
    cmd.env("ANSIBLE_COLLECTIONS_PATH", venvs().ec2.join("collections"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_DEPRECATION_WARNINGS", "False")
}

/// Run `playbooks/<playbook>` with `vars` as an operator would (`-i localhost,`), `duffy_out`
/// read by the scheduler's own callback (`src/scheduler/duffy_out.py`): (output, duffy_out or
/// null when the play set none).
fn playbook(playbook: &str, vars: &Value) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let vars_file = dir.path().join("vars.json");
    std::fs::write(&vars_file, vars.to_string()).unwrap();
    let plugins = dir.path().join("callback_plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        repo().join("src/scheduler/duffy_out.py"),
        plugins.join("duffy_out.py"),
    )
    .unwrap();
    let out_file = dir.path().join("duffy_out.json");
    let mut cmd = Command::new(venvs().ec2.join("bin/ansible-playbook"));
    ec2_env(&mut cmd)
        .current_dir(repo().join("playbooks"))
        .env("ANSIBLE_CALLBACK_PLUGINS", &plugins)
        .env("ANSIBLE_CALLBACKS_ENABLED", "duffy_out")
        .env("DUFFY_OUT_FILE", &out_file)
        .args(["-i", "localhost,", playbook, "-e"])
        .arg(format!("@{}", vars_file.display()));
    let o = cmd.output().expect("run ansible-playbook");
    let out = std::fs::read_to_string(&out_file)
        .map(|t| serde_json::from_str(&t).expect("duffy_out JSON"))
        .unwrap_or(Value::Null);
    (o, out)
}

fn with(mut vars: Value, more: Value) -> Value {
    for (k, v) in more.as_object().unwrap() {
        vars[k] = v.clone();
    }
    vars
}

fn nodes_in(ids: &[u32]) -> Value {
    json!({"nodes": ids.iter().map(|i| json!({"id": i, "hostname": null, "ipaddr": null})).collect::<Vec<_>>()})
}

fn ok_play(o: &Output) {
    assert!(
        o.status.success(),
        "playbook failed:\n{}{}",
        stdout(o),
        stderr(o)
    );
}

/// A real sshd on port `port` of the addresses moto gives a region's instances
/// (127.77.`net`.4–60), letting root in with the keys of `authorized_keys` only; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start(net: u8) -> Sshd {
        let o = Command::new("bash")
            .arg(repo().join(".ci/lab-deps.sh"))
            .output()
            .expect("run .ci/lab-deps.sh");
        assert!(o.status.success(), ".ci/lab-deps.sh: {}", stderr(&o));
        // sshd's privilege separation directory (a fresh machine has none)
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"));
        std::fs::write(d.join("authorized_keys"), "").unwrap();
        let port = free_port();
        let mut cfg = format!(
            "Port {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PidFile none\nLogLevel ERROR\n",
            hk = d.join("host_key").display(),
            ak = d.join("authorized_keys").display(),
        );
        for host in 4..=19 {
            cfg.push_str(&format!("ListenAddress 127.77.{net}.{host}\n"));
        }
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let s = Sshd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((format!("127.77.{net}.4"), port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start: {}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Let the key pair `key` (private key path) in as root.
    fn authorize(&self, key: &Path) {
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        std::fs::write(self.dir.path().join("authorized_keys"), public).unwrap();
    }

    /// Let no key in (cloud-init has not run yet).
    fn deauthorize(&self) {
        std::fs::write(self.dir.path().join("authorized_keys"), "").unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key pair at `path` (+ `.pub`).
fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "duffy@ec2-test",
            "-f",
        ])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
}

/// Defect 1 (provision side): an instance that never becomes reachable is terminated when the
/// run fails; the node's reason names the wait. (The old play left it running.)
#[test]
fn a_failed_provision_leaves_no_instance_running() {
    let r = Region::new("eu-west-1", 1);
    // nothing listens on this port of the instance's address
    let closed = free_port();
    let vars = with(
        r.vars("virt-ec2-t2-centos-9s-x86_64"),
        json!({"duffy_in": nodes_in(&[11]), "aws_ec2_ssh_port": closed}),
    );
    let (o, out) = playbook("ec2-provision.yml", &vars);
    let text = stdout(&o);
    assert!(!o.status.success(), "{text}");
    assert_eq!(out, Value::Null, "no duffy_out on failure");
    assert!(
        text.contains("Wait until sshd greets on each instance: Timeout when waiting"),
        "{text}"
    );
    let started: Vec<Value> = r
        .instances()
        .into_iter()
        .filter(|i| i["tags"]["DuffyNodeId"] == "11")
        .collect();
    assert_eq!(started.len(), 1, "one instance was started: {started:?}");
    assert_eq!(r.live_for("11"), Vec::<Value>::new(), "and terminated");
}

/// Defect 1 (deprovision side): a node without `data.provision.ec2_instance_id` (its
/// provisioning was killed or failed after the start) still has its instance terminated, found
/// by the installation/pool/node tags; only nodes with an id are reported.
#[test]
fn deprovision_finds_instances_by_their_tags() {
    let r = Region::new("eu-west-2", 2);
    let pool = "virt-ec2-t2-centos-10s-x86_64";
    let vars = with(r.vars(pool), json!({"aws_ec2_ssh_wait": false}));
    let (o, out) = playbook(
        "ec2-provision.yml",
        &with(vars.clone(), json!({"duffy_in": nodes_in(&[21, 22])})),
    );
    ok_play(&o);
    let nodes = out["nodes"].as_array().unwrap();
    let (id21, id22) = (
        nodes[0]["ec2_instance_id"].as_str().unwrap(),
        nodes[1]["ec2_instance_id"].as_str().unwrap(),
    );
    // an instance of another pool with the same node id: not this node's
    let other = aws(
        r.name,
        &[
            "run",
            &r.subnet,
            &r.ami("centos-9s-x86_64"),
            "DuffyInstallation=duffy",
            "DuffyPool=another-pool",
            "DuffyNodeId=21",
        ],
    );
    let duffy_in = json!({"nodes": [
        {"id": 21, "hostname": null, "ipaddr": null, "data": {"error": {"detail": "killed"}}},
        {"id": 22, "hostname": nodes[1]["hostname"], "ipaddr": nodes[1]["ipaddr"],
         "data": {"provision": nodes[1]}},
    ]});
    let (o, out) = playbook(
        "ec2-deprovision.yml",
        &with(vars, json!({"duffy_in": duffy_in})),
    );
    ok_play(&o);
    assert_eq!(out, json!({"nodes": [{"ec2_instance_id": id22}]}));
    assert_eq!(r.state_of(id21), "terminated");
    assert_eq!(r.state_of(id22), "terminated");
    assert_eq!(r.state_of(other.as_str().unwrap()), "running");
}

/// Defect 2: two installations (staging, production) in one account and region never adopt or
/// terminate each other's instances: the tags and the retry's lookup include the installation.
#[test]
fn installations_do_not_adopt_each_others_instances() {
    let r = Region::new("eu-central-1", 3);
    let pool = "virt-ec2-c6g-centos-9s-aarch64";
    let vars = with(
        r.vars(pool),
        json!({"aws_ec2_ssh_wait": false, "duffy_in": nodes_in(&[31]),
               "aws_ec2_instance_type": "c6g.xlarge", "aws_ec2_image_id": r.ami("centos-9s-aarch64")}),
    );
    let run = |installation: &str| {
        let (o, out) = playbook(
            "ec2-provision.yml",
            &with(vars.clone(), json!({"duffy_installation": installation})),
        );
        ok_play(&o);
        out["nodes"][0]["ec2_instance_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let staging = run("staging");
    let production = run("production");
    assert_ne!(staging, production, "production adopted staging's instance");
    // a retry within one installation still finds its instance
    assert_eq!(run("production"), production);
    let live = r.live_for("31");
    assert_eq!(live.len(), 2, "{live:?}");
    for i in &live {
        let want = if i["id"] == staging.as_str() {
            "staging"
        } else {
            "production"
        };
        assert_eq!(i["tags"]["DuffyInstallation"], want, "{i}");
        assert_eq!(i["tags"]["DuffyPool"], pool, "{i}");
        assert_eq!(i["type"], "c6g.xlarge", "{i}");
    }
    // production's teardown by tags leaves staging's instance alone
    let (o, _) = playbook(
        "ec2-deprovision.yml",
        &with(
            vars,
            json!({"duffy_installation": "production",
                   "duffy_in": {"nodes": [{"id": 31, "hostname": null, "ipaddr": null, "data": {}}]}}),
        ),
    );
    ok_play(&o);
    assert_eq!(r.state_of(&production), "terminated");
    assert_eq!(r.state_of(&staging), "running");
}

/// Defect 3: no public IPv4 address unless the pool asks for one (`aws_ec2_assign_public_ip`).
#[test]
fn no_public_address_unless_asked() {
    let r = Region::new("ap-southeast-1", 4);
    let vars = with(
        r.vars("metal-ec2-c5n-centos-9s-x86_64"),
        json!({"aws_ec2_ssh_wait": false, "aws_ec2_instance_type": "c5n.metal"}),
    );
    let (o, out) = playbook(
        "ec2-provision.yml",
        &with(vars.clone(), json!({"duffy_in": nodes_in(&[41])})),
    );
    ok_play(&o);
    assert_eq!(out["nodes"][0]["public_ipaddress"], Value::Null, "{out}");
    let i = &r.live_for("41")[0];
    assert_eq!(i["public_ip"], Value::Null, "{i}");
    assert_eq!(i["type"], "c5n.metal", "{i}");
    let (o, out) = playbook(
        "ec2-provision.yml",
        &with(
            vars,
            json!({"duffy_in": nodes_in(&[42]), "aws_ec2_assign_public_ip": true}),
        ),
    );
    ok_play(&o);
    let public = out["nodes"][0]["public_ipaddress"]
        .as_str()
        .unwrap_or_default();
    assert!(!public.is_empty(), "{out}");
    assert_eq!(r.live_for("42")[0]["public_ip"], public);
}

/// Defect 4: the SSH wait needs sshd's greeting (an open port is not enough) and, with the
/// pool's key, a root login with it (cloud-init may not have installed it yet); a node that
/// never gets there fails with the reason and leaves no instance.
#[test]
fn the_ssh_wait_waits_for_the_greeting_and_the_key() {
    let r = Region::new("us-west-2", 5);
    let sshd = Sshd::start(r.net);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("duffy_key");
    keygen(&key);
    // a port that accepts connections but is no sshd (the kernel completes the handshakes)
    let silent_port = free_port();
    let _silent: Vec<TcpListener> = (4..=19)
        .map(|h| TcpListener::bind((format!("127.77.{}.{h}", r.net), silent_port)).unwrap())
        .collect();
    let vars = with(
        r.vars("virt-ec2-t2-centos-9s-x86_64"),
        json!({"aws_ec2_ssh_key_file": key.display().to_string()}),
    );

    let (o, _) = playbook(
        "ec2-provision.yml",
        &with(
            vars.clone(),
            json!({"duffy_in": nodes_in(&[51]), "aws_ec2_ssh_port": silent_port}),
        ),
    );
    let text = stdout(&o);
    assert!(
        !o.status.success(),
        "an open port without sshd passed the wait:\n{text}"
    );
    assert!(
        text.contains("Timeout when waiting for search string"),
        "{text}"
    );

    // sshd greets, but the key is not there yet
    let (o, _) = playbook(
        "ec2-provision.yml",
        &with(
            vars.clone(),
            json!({"duffy_in": nodes_in(&[52]), "aws_ec2_ssh_port": sshd.port}),
        ),
    );
    let text = stdout(&o);
    assert!(
        !o.status.success(),
        "the key was not installed, yet the wait passed:\n{text}"
    );
    assert!(
        text.contains("Wait until duffy's key logs in as root"),
        "{text}"
    );
    for n in ["51", "52"] {
        assert_eq!(
            r.live_for(n),
            Vec::<Value>::new(),
            "node {n}'s instance left running"
        );
    }

    sshd.authorize(&key);
    let (o, out) = playbook(
        "ec2-provision.yml",
        &with(
            vars,
            json!({"duffy_in": nodes_in(&[53]), "aws_ec2_ssh_port": sshd.port}),
        ),
    );
    ok_play(&o);
    let ip = out["nodes"][0]["ipaddr"].as_str().unwrap().to_string();
    assert!(ip.starts_with(&format!("127.77.{}.", r.net)), "{out}");
    assert_eq!(r.live_for("53").len(), 1);
}

/// A `duffy serve` or `duffy scheduler` process, killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const T2: &str = "virt-ec2-t2-centos-9s-x86_64";
const T2_10: &str = "virt-ec2-t2-centos-10s-x86_64";
const C6G: &str = "virt-ec2-c6g-centos-9s-aarch64";
const C5N: &str = "metal-ec2-c5n-centos-9s-x86_64";

/// duffy with the shipped `etc/pools/70_nodepools-ec2.yaml`, copied verbatim into a config
/// directory after the database/scheduler settings and before `90_test.yaml`, which overrides
/// only the endpoint, AMIs, subnet, security group, the SSH port and key (the region's `Sshd`,
/// which lets the key in), `contextualize: none`, and the fill levels of the pools in `fill` —
/// and the region unless it is the shipped one (moto keeps regions apart: one per test) —
/// the only pools the scheduler fills (`--pool`). `extra`: more keys of a concrete pool (YAML
/// lines at 6 spaces).
struct Stack {
    r: Region,
    sshd: Sshd,
    dir: tempfile::TempDir,
    conf: PathBuf,
    db: TestDb,
    key: PathBuf,
    fill: Vec<(&'static str, u32)>,
    sched: Option<Daemon>,
    scheds: usize,
}

impl Stack {
    fn new(
        r: Region,
        fill: &[(&'static str, u32)],
        scheduler: &str,
        extra: &[(&str, String)],
    ) -> Stack {
        let sshd = Sshd::start(r.net);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let key = d.join("duffy_key");
        keygen(&key);
        sshd.authorize(&key);
        let db = TestDb::empty();
        let conf = d.join("config");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(
            conf.join("00_duffy.yaml"),
            format!(
                "database:\n  sqlalchemy:\n    sync_url: {url}\n{DEFAULTS_YAML}\
                 scheduler:\n  ansible-playbook: {ap}\n  job-log-dir: {d}/jobs\n  state-dir: {d}/state\n  \
                 retry-delay: 1s\n  fill-interval: 1h\n  expire-interval: 1h\n  playbook-timeout: 120s\n{scheduler}",
                url = db.url,
                ap = venvs().ec2.join("bin/ansible-playbook").display(),
                d = d.display(),
            ),
        )
        .unwrap();
        std::fs::copy(
            repo().join("etc/pools/70_nodepools-ec2.yaml"),
            conf.join("70_nodepools-ec2.yaml"),
        )
        .unwrap();
        let mut over = format!(
            "nodepools:\n  abstract:\n    ec2:\n      contextualize: none\n      mechanism:\n        ansible:\n          extra-vars:\n            \
             aws_ec2_endpoint_url: {url}\n            aws_ec2_subnets: [{subnet}]\n            \
             aws_ec2_security_groups: [{sg}]\n            aws_ec2_ssh_port: {port}\n            \
             aws_ec2_ssh_key_file: {key}\n            aws_ec2_ssh_poll: 1\n{region}  concrete:\n",
            url = moto(),
            subnet = r.subnet,
            sg = r.security_group,
            port = sshd.port,
            key = key.display(),
            // the shipped region, but for the tests that need a region of their own
            region = if r.name == "us-east-1" {
                String::new()
            } else {
                format!("            aws_ec2_region: {}\n", r.name)
            },
        );
        for (pool, ami) in [
            (T2, "centos-9s-x86_64"),
            (T2_10, "centos-10s-x86_64"),
            (C6G, "centos-9s-aarch64"),
            ("virt-ec2-c6g-centos-10s-aarch64", "centos-10s-aarch64"),
            (C5N, "centos-9s-x86_64"),
            ("metal-ec2-c5n-centos-10s-x86_64", "centos-10s-x86_64"),
        ] {
            over.push_str(&format!("    {pool}:\n      image_id: {}\n", r.ami(ami)));
            if let Some((_, level)) = fill.iter().find(|f| f.0 == pool) {
                over.push_str(&format!("      fill-level: {level}\n"));
            }
            for (_, lines) in extra.iter().filter(|e| e.0 == pool) {
                over.push_str(lines);
            }
        }
        std::fs::write(conf.join("90_test.yaml"), over).unwrap();
        ok(&duffy(Some(&conf), &["config", "check"]));
        ok(&duffy(Some(&conf), &["migrate"]));
        Stack {
            r,
            sshd,
            dir,
            conf,
            db,
            key,
            fill: fill.to_vec(),
            sched: None,
            scheds: 0,
        }
    }

    /// Start `duffy scheduler --pool …` (the pools of `fill`) in the repository (the shipped
    /// `topdir: playbooks` is relative to it).
    fn start_scheduler(&mut self) {
        self.scheds += 1;
        let log = self
            .dir
            .path()
            .join(format!("scheduler-{}.log", self.scheds));
        let mut args = vec!["scheduler"];
        for (p, _) in &self.fill {
            args.extend(["--pool", p]);
        }
        let mut cmd = duffy_cmd(Some(&self.conf), &args);
        ec2_env(&mut cmd)
            .current_dir(repo())
            .env("DUFFY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        self.sched = Some(Daemon(cmd.spawn().expect("start duffy scheduler")));
    }

    /// SIGKILL the scheduler (its playbooks die with it: PR_SET_PDEATHSIG).
    fn kill_scheduler(&mut self) {
        self.sched = None;
    }

    fn diag(&self) -> String {
        let mut s = format!(
            "nodes: {:?}\njobs: {:?}\ninstances: {:?}\n",
            self.db.rows("SELECT id || ' ' || pool || ' ' || state || ' ' || coalesce(ipaddr, '-') || ' ' || coalesce(data->>'error', '') FROM nodes ORDER BY id"),
            self.db.rows("SELECT id || ' ' || kind || ' ' || state || ' attempts=' || attempts || ' ' || coalesce(last_error, '') FROM duffy_jobs ORDER BY id"),
            self.r.instances(),
        );
        for p in self.db.rows(
            "SELECT log_path FROM duffy_jobs WHERE log_path IS NOT NULL ORDER BY updated_at DESC LIMIT 2",
        ) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("--- {p} (tail)\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        for i in 1..=self.scheds {
            let p = self.dir.path().join(format!("scheduler-{i}.log"));
            s.push_str(&format!(
                "--- scheduler-{i}.log\n{}",
                std::fs::read_to_string(p).unwrap_or_default()
            ));
        }
        s
    }

    fn wait(&self, what: &str, f: &dyn Fn() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(150),
                "waited for {what}\n{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ready(&self, pool: &str) -> Vec<String> {
        self.db.rows(&format!(
            "SELECT id FROM nodes WHERE pool = '{pool}' AND state = 'ready' ORDER BY id"
        ))
    }

    fn filled(&self) -> bool {
        self.fill
            .iter()
            .all(|(p, n)| self.ready(p).len() == *n as usize)
    }
}

/// `serve` + `scheduler` with the shipped `etc/pools/70_nodepools-ec2.yaml` (see [`Stack`] for
/// what is overridden), in the shipped region: the t2, c6g (aarch64) and c5n.metal pools fill
/// with instances of the right type/AMI/tags, `duffy client request-session` lends them within
/// the tenant's quota, the pools refill, retiring terminates the instances, the nodes end
/// `done`, and no instance is left without a live node.
#[test]
fn shipped_pools_fill_lend_retire_refill() {
    let mut st = Stack::new(
        Region::new("us-east-1", 6),
        &[(T2, 2), (C6G, 1), (C5N, 1)],
        "",
        &[],
    );
    let api_key = create_tenant(&st.conf, "tnt", &["--node-quota", "3"]);
    let server = Server::start(&st.conf);
    st.start_scheduler();
    let (r, db) = (&st.r, &st.db);
    let ready = |p: &str| st.ready(p);
    let filled = || st.filled();
    st.wait("the pools filled", &filled);
    // every node is a running instance of its pool's type and AMI, tagged for it
    let check_node = |id: &str| {
        let prov: Value = serde_json::from_str(&db.one(&format!(
            "SELECT data->'provision' FROM nodes WHERE id = {id}"
        )))
        .unwrap();
        let pool = db.one(&format!("SELECT pool FROM nodes WHERE id = {id}"));
        let live = r.live_for(id);
        assert_eq!(live.len(), 1, "node {id}: {live:?}");
        let i = &live[0];
        assert_eq!(i["id"], prov["ec2_instance_id"], "node {id}");
        assert_eq!(i["private_ip"], prov["ipaddr"], "node {id}");
        assert_eq!(i["public_ip"], Value::Null, "node {id}");
        assert_eq!(i["tags"]["DuffyPool"], pool.as_str(), "node {id}");
        assert_eq!(i["tags"]["DuffyInstallation"], "production", "node {id}");
        let (ty, ami) = match pool.as_str() {
            T2 => ("t2.xlarge", "centos-9s-x86_64"),
            C6G => ("c6g.xlarge", "centos-9s-aarch64"),
            C5N => ("c5n.metal", "centos-9s-x86_64"),
            p => panic!("node {id} of {p}"),
        };
        assert_eq!(i["type"], ty, "node {id}");
        assert_eq!(i["image"], r.ami(ami).as_str(), "node {id}");
    };
    for (p, _) in &st.fill {
        for id in ready(p) {
            check_node(&id);
        }
    }

    let client = |args: &[&str]| {
        let url = format!("{}/api/v1", server.url());
        let mut a = vec![
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            &api_key,
        ];
        a.extend_from_slice(args);
        duffy(None, &a)
    };
    let lend = |spec: &str| -> Value {
        serde_json::from_str(&ok(&client(&["request-session", spec]))).expect("session JSON")
    };
    let s1 = lend(&format!("pool={T2},quantity=2"));
    let s1_nodes: Vec<String> = s1["session"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    assert_eq!(s1_nodes.len(), 2, "{s1}");
    for n in &s1["session"]["nodes"].as_array().unwrap()[..] {
        assert_eq!(n["state"], "deployed", "{n}");
        assert!(
            n["ipaddr"].as_str().unwrap().starts_with("127.77.6."),
            "{n}"
        );
    }
    lend(&format!("pool={C6G},quantity=1"));
    // the quota (3 nodes) is used up: the metal node is refused, nothing is taken
    // (upstream's client prints the API's error and exits 0; duffy's does the same)
    let o = client(&["request-session", &format!("pool={C5N},quantity=1")]);
    let refused: Value = serde_json::from_str(&stdout(&o)).expect("JSON from duffy client");
    let detail = refused["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("quota exceeded"),
        "over quota: {refused}"
    );
    assert_eq!(ready(C5N).len(), 1);
    // the lent nodes are replaced by new instances
    st.wait("the pools refilled after lending", &filled);

    let s1_id = s1["session"]["id"].to_string();
    ok(&client(&["retire-session", &s1_id]));
    st.wait("the retired nodes done", &|| {
        s1_nodes
            .iter()
            .all(|id| db.one(&format!("SELECT state FROM nodes WHERE id = {id}")) == "done")
    });
    for id in &s1_nodes {
        assert_eq!(r.live_for(id), Vec::<Value>::new(), "node {id}'s instance");
    }
    st.wait("the pools full", &filled);
    // no instance without a live node, no live node without its instance
    let live_nodes =
        db.rows("SELECT id FROM nodes WHERE state IN ('ready', 'deployed') ORDER BY id");
    for id in &live_nodes {
        check_node(id);
    }
    let running: Vec<Value> = r
        .instances()
        .into_iter()
        .filter(|i| i["state"] == "running")
        .collect();
    assert_eq!(
        running.len(),
        live_nodes.len(),
        "{running:?}\n{}",
        st.diag()
    );
}

/// `tests/ec2/faulty.py` in front of the moto server: the first `count` RunInstances calls
/// (-1: all) get AWS's error `code`; killed on drop.
struct Faulty {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Faulty {
    fn start(code: &str, count: i32) -> Faulty {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("faulty.log");
        let port = free_port();
        let child = Command::new(venvs().moto.join("bin/python"))
            .arg(repo().join("tests/ec2/faulty.py"))
            .args([&port.to_string(), moto(), code, &count.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start faulty.py");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "faulty.py did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Faulty {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// One line per RunInstances call: "RunInstances <code>" or "RunInstances forwarded".
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Failures the cloud produces, through the scheduler and the shipped pools, each pool behind
/// its own faulty endpoint:
/// - c5n.metal: `InstanceLimitExceeded` on every start → node `failed` with AWS's code in its
///   reason, retried with back-off, given up after `max-attempts`, then the pool pauses instead
///   of looping; nothing started;
/// - t2 10s: `InsufficientInstanceCapacity` twice → amazon.aws's own back-off retries the start
///   (it treats the code as transient), node `ready`, one instance;
/// - c6g: `RequestLimitExceeded` twice → the SDK's back-off, node `ready`, one instance;
/// - t2 9s: an instance that never becomes reachable → terminated each attempt, node `failed`
///   with the reason, no instance left running.
#[test]
fn cloud_errors_fail_cleanly_with_back_off() {
    let limit = Faulty::start("InstanceLimitExceeded", -1);
    let capacity = Faulty::start("InsufficientInstanceCapacity", 2);
    let throttled = Faulty::start("RequestLimitExceeded", 2);
    let closed = free_port();
    let pool_vars = |pool: &'static str, vars: String| {
        (
            pool,
            format!("      mechanism:\n        ansible:\n          extra-vars: {{{vars}}}\n"),
        )
    };
    let extra = [
        pool_vars(C5N, format!("aws_ec2_endpoint_url: '{}'", limit.url)),
        pool_vars(T2_10, format!("aws_ec2_endpoint_url: '{}'", capacity.url)),
        pool_vars(C6G, format!("aws_ec2_endpoint_url: '{}'", throttled.url)),
        pool_vars(
            T2,
            format!("aws_ec2_ssh_port: {closed}, aws_ec2_ssh_timeout: 3"),
        ),
    ];
    let mut st = Stack::new(
        Region::new("sa-east-1", 7),
        &[(C5N, 1), (T2_10, 1), (C6G, 1), (T2, 1)],
        "  max-attempts: 2\n",
        &extra,
    );
    st.start_scheduler();
    let given_up = |pool: &str| {
        st.db.rows(&format!(
            "SELECT attempts FROM duffy_jobs WHERE pool = '{pool}' AND kind = 'provision' AND state = 'failed'"
        ))
    };
    st.wait("c5n and t2 9s given up, t2 10s and c6g ready", &|| {
        given_up(C5N).len() == 1
            && given_up(T2).len() == 1
            && st.ready(T2_10).len() == 1
            && st.ready(C6G).len() == 1
    });
    for pool in [C5N, T2] {
        assert_eq!(given_up(pool), ["2"], "{pool}: two attempts\n{}", st.diag());
    }
    let tagged = |pool: &str| -> Vec<Value> {
        st.r.instances()
            .into_iter()
            .filter(|i| i["tags"]["DuffyPool"] == pool)
            .collect()
    };
    let error = |pool: &str| {
        st.db.one(&format!(
            "SELECT data->'error'->>'detail' FROM nodes WHERE pool = '{pool}' AND state = 'failed'"
        ))
    };

    // the limit: AWS's code in the node's reason, one RunInstances per attempt, nothing started
    let e = error(C5N);
    assert!(e.contains("InstanceLimitExceeded"), "{e}");
    assert!(e.contains("giving up after 2 attempts"), "{e}");
    assert_eq!(limit.calls(), ["RunInstances InstanceLimitExceeded"; 2]);
    assert_eq!(tagged(C5N), Vec::<Value>::new());

    // capacity and request limit: retried with back-off within the run, one instance each
    for (pool, faulty, code) in [
        (T2_10, &capacity, "InsufficientInstanceCapacity"),
        (C6G, &throttled, "RequestLimitExceeded"),
    ] {
        let want = [
            format!("RunInstances {code}"),
            format!("RunInstances {code}"),
            "RunInstances forwarded".to_string(),
        ];
        assert_eq!(faulty.calls(), want, "{pool}");
        let live = tagged(pool);
        assert_eq!(live.len(), 1, "{pool}: {live:?}");
        assert_eq!(live[0]["state"], "running", "{pool}");
    }

    // never reachable: an instance per attempt, each terminated; the reason says why
    let e = error(T2);
    assert!(e.contains("Wait until sshd greets"), "{e}");
    let t2 = tagged(T2);
    assert_eq!(t2.len(), 2, "{t2:?}");
    assert!(t2.iter().all(|i| i["state"] == "terminated"), "{t2:?}");

    // the pools whose jobs gave up are paused (fill-interval·2ⁿ), not refilled in a loop: the
    // sweeps after the give-ups queued nothing new for them
    std::thread::sleep(Duration::from_secs(2));
    for pool in [C5N, T2] {
        let jobs = st.db.one(&format!(
            "SELECT count(*) FROM duffy_jobs WHERE pool = '{pool}' AND kind = 'provision'"
        ));
        assert_eq!(jobs, "1", "{pool}\n{}", st.diag());
    }
}

/// The scheduler SIGKILLed while its playbook waits for a started instance (the instance
/// exists, the node is not recorded): the next attempt, by a new scheduler once the lease
/// expired, finds the instance by its tags — one instance for the node, ever.
#[test]
fn sigkill_mid_provision_leaves_one_instance_per_node() {
    let mut st = Stack::new(
        Region::new("ca-central-1", 8),
        &[(T2, 1)],
        "  lease: 3s\n",
        &[],
    );
    // sshd greets but does not let duffy's key in yet: the playbook waits there
    st.sshd.deauthorize();
    st.start_scheduler();
    let node = {
        let st = &st;
        let mut id = String::new();
        st.wait("an instance started for the provisioning node", &|| {
            st.db
                .rows("SELECT id FROM nodes WHERE state = 'provisioning'")
                .first()
                .is_some_and(|n| !st.r.live_for(n).is_empty())
        });
        id.push_str(
            &st.db
                .one("SELECT id FROM nodes WHERE state = 'provisioning'"),
        );
        id
    };
    st.kill_scheduler();
    let first = st.r.live_for(&node);
    assert_eq!(first.len(), 1, "{first:?}");
    st.sshd.authorize(&st.key);
    st.start_scheduler();
    st.wait("the node ready", &|| st.ready(T2) == [node.clone()]);
    let all: Vec<Value> =
        st.r.instances()
            .into_iter()
            .filter(|i| i["tags"]["DuffyNodeId"] == node.as_str())
            .collect();
    assert_eq!(all.len(), 1, "two instances for node {node}: {all:?}");
    assert_eq!(all[0]["id"], first[0]["id"]);
    assert_eq!(all[0]["state"], "running");
    let recorded = st.db.one(&format!(
        "SELECT data->'provision'->>'ec2_instance_id' FROM nodes WHERE id = {node}"
    ));
    assert_eq!(all[0]["id"], recorded.as_str());
}

/// `duffy reconcile` with the shipped pool file's `ec2-reconcile.yml`: an instance started
/// behind duffy's back with this installation's tags (no live node: an orphan) and a node whose
/// instance was terminated behind its back are found by the dry run, which changes nothing;
/// `--apply` leaves the orphan alone within the grace period, marks the node `failed`, and with
/// `--grace 0s` terminates the orphan — each action audited; another installation's instance,
/// an untagged one and the healthy node are never touched.
#[test]
fn reconcile_finds_and_fixes_what_changed_behind_duffys_back() {
    let mut st = Stack::new(Region::new("ap-northeast-1", 9), &[(T2, 2)], "", &[]);
    st.start_scheduler();
    st.wait("the pool filled", &|| st.filled());
    // nothing else moves while duffy reconcile runs
    st.kill_scheduler();
    let nodes = st.ready(T2);
    let (gone_node, healthy) = (nodes[0].clone(), nodes[1].clone());
    let instance_of = |node: &str| {
        st.db.one(&format!(
            "SELECT data->'provision'->>'ec2_instance_id' FROM nodes WHERE id = {node}"
        ))
    };
    let (gone_instance, healthy_instance) = (instance_of(&gone_node), instance_of(&healthy));
    let r = &st.r;
    let run = |tags: &[&str]| -> String {
        let ami = r.ami("centos-9s-x86_64");
        let mut args = vec!["run", r.subnet.as_str(), ami.as_str()];
        args.extend_from_slice(tags);
        aws(r.name, &args).as_str().unwrap().to_string()
    };
    let orphan = run(&[
        "DuffyInstallation=production",
        &format!("DuffyPool={T2}"),
        "DuffyNodeId=999",
    ]);
    let staging = run(&[
        "DuffyInstallation=staging",
        &format!("DuffyPool={T2}"),
        "DuffyNodeId=999",
    ]);
    let untagged = run(&["Name=someone-elses"]);
    aws(r.name, &["terminate", &gone_instance]);

    let reconcile = |args: &[&str]| -> String {
        let mut a = vec!["reconcile", "--pool", T2];
        a.extend_from_slice(args);
        let mut cmd = duffy_cmd(Some(&st.conf), &a);
        ec2_env(&mut cmd).current_dir(repo());
        ok(&output_within(cmd, Duration::from_secs(120)))
    };
    let audit = || {
        st.db.rows(
            "SELECT action || ' ' || coalesce(entity_id::text, '-') || ' ' || detail::text \
             FROM duffy_audit_log WHERE actor = 'reconcile' ORDER BY id",
        )
    };
    let state = |node: &str| {
        st.db
            .one(&format!("SELECT state FROM nodes WHERE id = {node}"))
    };

    let out = reconcile(&["--grace", "0s"]);
    assert!(
        out.contains(&format!(
            "orphan: pool {T2}: instance {orphan} (node 999, not live; age "
        )) && out.contains("would terminate (dry run)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "gone: pool {T2}: node {gone_node} (ready) has no running instance: would mark failed (dry run)"
        )),
        "{out}"
    );
    assert!(out.ends_with("2 finding(s), dry run\n"), "{out}");
    assert_eq!(state(&gone_node), "ready");
    assert_eq!(r.state_of(&orphan), "running");
    assert_eq!(audit(), Vec::<String>::new());

    // default grace (1 h): the fresh orphan is left alone; the node is failed
    let out = reconcile(&["--apply"]);
    assert!(
        out.contains(&format!("instance {orphan} ")) && out.contains("within the grace period"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "node {gone_node} (ready) has no running instance: marked failed"
        )),
        "{out}"
    );
    assert_eq!(r.state_of(&orphan), "running");
    assert_eq!(state(&gone_node), "failed");
    let reason = st.db.one(&format!(
        "SELECT data->'error'->>'detail' FROM nodes WHERE id = {gone_node}"
    ));
    assert!(reason.contains("instance is gone"), "{reason}");

    let out = reconcile(&["--apply", "--grace", "0s"]);
    assert!(
        out.contains(&format!("instance {orphan} (node 999, not live; age "))
            && out.contains("): terminated"),
        "{out}"
    );
    assert!(out.ends_with("1 finding(s), applied\n"), "{out}");
    assert_eq!(r.state_of(&orphan), "terminated");
    for (what, id) in [
        ("staging's", &staging),
        ("untagged", &untagged),
        ("healthy", &healthy_instance),
    ] {
        assert_eq!(r.state_of(id), "running", "{what} instance");
    }
    assert_eq!(state(&healthy), "ready");
    let a = audit();
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a[0].starts_with(&format!("reconcile-instance-gone {gone_node} ")),
        "{a:?}"
    );
    assert!(
        a[1].starts_with("reconcile-terminate - ") && a[1].contains(&orphan),
        "{a:?}"
    );

    // and now nothing is left to do
    let out = reconcile(&["--grace", "0s"]);
    assert_eq!(out, "0 finding(s), dry run\n");
}

/// `scheduler.reconcile-interval` (off by default): the daemon runs `reconcile --apply` on its
/// own timer; an instance started behind its back with the installation's tags is terminated
/// (past `reconcile-grace`) and audited, the pool's own instance stays.
#[test]
fn the_scheduler_reconciles_periodically_when_asked() {
    let mut st = Stack::new(
        Region::new("eu-north-1", 10),
        &[(T2, 1)],
        "  reconcile-interval: 2s\n  reconcile-grace: 0s\n",
        &[],
    );
    st.start_scheduler();
    st.wait("the pool filled", &|| st.filled());
    let node = st.ready(T2)[0].clone();
    let ami = st.r.ami("centos-9s-x86_64");
    let pool_tag = format!("DuffyPool={T2}");
    let orphan = aws(
        st.r.name,
        &[
            "run",
            &st.r.subnet,
            &ami,
            "DuffyInstallation=production",
            &pool_tag,
            "DuffyNodeId=999",
        ],
    );
    let orphan = orphan.as_str().unwrap();
    // the audit row is written once the playbook has terminated it
    let audit = || {
        st.db.rows(
            "SELECT action || ' ' || (detail->>'instance_id') FROM duffy_audit_log WHERE actor = 'reconcile'",
        )
    };
    st.wait("the orphan's termination audited", &|| !audit().is_empty());
    assert_eq!(audit(), [format!("reconcile-terminate {orphan}")]);
    assert_eq!(st.r.state_of(orphan), "terminated");
    assert_eq!(st.r.live_for(&node).len(), 1);
    assert_eq!(st.ready(T2), [node]);
}
