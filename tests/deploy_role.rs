//! `roles/duffy_server` deploys a working duffy (issue 15 item 4), run for real by
//! `playbooks/deploy.yml` under a real ansible-core over SSH against a lab node
//! (`roles/lab_node`: a network namespace with its own sshd) that the test makes.
//!
//! What runs, honestly: the lab node shares the machine's filesystem, so the test runs in
//! `.ci/fresh-run.sh`'s private view with throw-away overlays on `/etc`, `/usr/local`,
//! `/var/lib` and `/root`: the role's user, binaries, `/etc/duffy` and units land there and
//! vanish with the test. No systemd runs on this machine (PID 1 is not systemd), so the role
//! runs with `duffy_server_service_manager: none` (unit files installed, nothing enabled or
//! started) and the test starts what a unit would: the installed unit's `ExecStart`, as its
//! `User=`, and talks to it (`GET /api/v1/pools`) against a real PostgreSQL database that the
//! role's `duffy migrate` made. The units (also in `etc/systemd/`, byte for byte) pass
//! `systemd-analyze verify`. Then: a second run reports `changed=0`; a check-mode run after a
//! variable change reports the change and changes nothing.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const TEST: &str = "duffy_server_role_deploys_a_working_duffy_onto_a_lab_node";
const UNITS: [&str; 3] = ["duffy-app", "duffy-metaclient", "duffy-scheduler"];
/// What the role may write (missing ones are simply not listed by `find`).
const TOUCHED: [&str; 7] = [
    "/etc/duffy",
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/systemd/system",
    "/usr/local/bin",
    "/var/lib/duffy",
];

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The lab node's names and the Drop guard that removes them (the bridge and veth live in the
/// machine's network namespace, outside the test's overlays).
struct Lab {
    prefix: String,
    bridge: String,
    subnet: String,
    state: PathBuf,
}

impl Lab {
    fn new(state: &Path) -> Lab {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("dd{}", &hex[..4]);
        let mut x = u8::from_str_radix(&hex[4..6], 16).unwrap();
        let subnet = loop {
            let s = format!("10.234.{x}.0/24");
            let used = stdout(&run(
                Command::new("ip").args(["-o", "-4", "addr", "show", "to", &s])
            ));
            if used.trim().is_empty() {
                break s;
            }
            x = x.wrapping_add(1);
        };
        Lab {
            bridge: format!("{prefix}br"),
            prefix,
            subnet,
            state: state.to_path_buf(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let ns = format!("{}-1", self.prefix);
        let o = run(Command::new("ip").args(["netns", "pids", &ns]));
        for pid in stdout(&o).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = run(Command::new("ip").args(["netns", "del", &ns]));
        for link in [ns.as_str(), self.bridge.as_str()] {
            let _ = run(Command::new("ip").args(["link", "del", "dev", link]));
        }
    }
}

/// ansible-playbook from the repository with the tests' ansible.cfg (JSON callback).
fn playbook(work: &Path, args: &[&str]) -> serde_json::Value {
    let o = run(Command::new(ansible_bin().join("ansible-playbook"))
        .current_dir(repo())
        .env("ANSIBLE_CONFIG", work.join("ansible.cfg"))
        .args(args));
    let out = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| {
        panic!(
            "ansible-playbook {args:?}: not JSON (exit {:?})\n{out}\n{}",
            o.status.code(),
            stderr(&o)
        )
    });
    assert!(
        o.status.success(),
        "ansible-playbook {args:?} failed: {}\n{}",
        failures(&v),
        stderr(&o)
    );
    v
}

/// The failed tasks of a JSON callback result, for messages.
fn failures(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    for play in v["plays"].as_array().into_iter().flatten() {
        for t in play["tasks"].as_array().into_iter().flatten() {
            for (host, r) in t["hosts"].as_object().into_iter().flatten() {
                if r["failed"].as_bool() == Some(true) || r["unreachable"].as_bool() == Some(true) {
                    out.push(format!("{} on {host}: {}", t["task"]["name"], r));
                }
            }
        }
    }
    out.join("\n")
}

/// (task name, host result) of every task that reported a change.
fn changed_tasks(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for play in v["plays"].as_array().into_iter().flatten() {
        for t in play["tasks"].as_array().into_iter().flatten() {
            for (_, r) in t["hosts"].as_object().into_iter().flatten() {
                if r["changed"].as_bool() == Some(true) {
                    let name = t["task"]["name"].as_str().unwrap_or_default();
                    out.push(name.trim_start_matches("duffy_server : ").to_string());
                }
            }
        }
    }
    out
}

fn stat_changed(v: &serde_json::Value, host: &str) -> u64 {
    v["stats"][host]["changed"].as_u64().expect("stats")
}

/// Every file under `dirs` with its mode, owner, size and mtime (what a run may not change).
fn snapshot(dirs: &[&str]) -> Vec<String> {
    let o = run(Command::new("find")
        .args(dirs)
        .args(["-printf", "%p %m %u:%g %s %T@\n"]));
    let mut v: Vec<String> = stdout(&o).lines().map(String::from).collect();
    v.sort();
    v
}

/// An installed unit file's service settings.
struct Unit {
    name: String,
    exec: Vec<String>,
    user: String,
    group: String,
    dir: String,
    env: Vec<(String, String)>,
}

impl Unit {
    fn read(name: &str) -> Unit {
        let text = std::fs::read_to_string(format!("/etc/systemd/system/{name}.service")).unwrap();
        let key = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {name}.service"))
                .to_string()
        };
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        Unit {
            name: name.to_string(),
            exec: key("ExecStart")
                .split_whitespace()
                .map(String::from)
                .collect(),
            user: key("User"),
            group: key("Group"),
            dir: key("WorkingDirectory"),
            env,
        }
    }

    /// Start it the way systemd would (minus the sandbox, which needs systemd).
    fn start(&self) -> Running {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("setpriv")
            .args([
                "--reuid",
                &self.user,
                "--regid",
                &self.group,
                "--init-groups",
                "--",
            ])
            .args(&self.exec)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Running {
            name: self.name.clone(),
            child,
            log,
        }
    }
}

/// A started unit's process, killed on drop.
struct Running {
    name: String,
    child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("{} exited: {s}\n{}", self.name, self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} does not listen on {port}",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Wait (60 s at most) until `sql` answers `want`, failing with the log if it exits.
    fn wait_for(&mut self, db: &TestDb, sql: &str, want: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if db.one(sql) == want {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("{} exited: {s}\n{}", self.name, self.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {sql} is not {want}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// SIGTERM (what `systemctl stop` sends); it must exit 0 within 30 s.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        ok(&run(Command::new("kill").args(["-TERM", &pid])));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "{} on SIGTERM: {s}\n{}", self.name, self.log());
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still running 30 s after SIGTERM",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn duffy_server_role_deploys_a_working_duffy_onto_a_lab_node() {
    // installs before the overlays (dpkg's records must not go into a throw-away layer)
    ok(&run(
        Command::new("bash").arg(repo().join(".ci/lab-deps.sh"))
    ));
    ansible_bin();
    if !fresh_run_view_with(TEST, &["/etc", "/usr/local", "/var/lib", "/root"]) {
        return;
    }
    assert!(
        !Path::new("/etc/duffy").exists() && !Path::new("/usr/local/bin/duffy").exists(),
        "/etc/duffy or /usr/local/bin/duffy exist on this machine"
    );
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(
        w.join("ansible.cfg"),
        ansible_cfg("host_key_checking = False\n[ssh_connection]\npipelining = True\n"),
    )
    .unwrap();
    ok(&run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(w.join("key"))));

    // the target: a lab node with its own sshd, reached over SSH
    let lab = Lab::new(&w.join("lab"));
    let lab_vars = serde_json::json!({
        "duffy_in": {"nodes": [{"id": 1, "hostname": null, "ipaddr": null}]},
        "lab_prefix": lab.prefix, "lab_bridge": lab.bridge, "lab_subnet": lab.subnet,
        "lab_state_dir": lab.state, "lab_duffy_pubkey_file": w.join("key.pub"),
    });
    std::fs::write(w.join("lab.json"), lab_vars.to_string()).unwrap();
    playbook(
        w,
        &[
            "-i",
            "localhost,",
            "-c",
            "local",
            "playbooks/lab-provision.yml",
            "-e",
            &format!("@{}", w.join("lab.json").display()),
        ],
    );
    let ip = std::fs::read_to_string(lab.state.join(format!("{}-1/address", lab.prefix)))
        .expect("the node's address")
        .trim()
        .to_string();

    // the site's variables: a real database (over PostgreSQL's Unix socket, which the node sees
    // too: it shares this mount namespace's /run), a pool, a secret, the debug build's binaries
    let db = TestDb::empty();
    let port = free_port();
    let legacy_port = free_port();
    let inventory = serde_json::json!({
        "duffy_servers": {"hosts": {"target": {
            "ansible_host": ip, "ansible_user": "root",
            // the target's own Python (the node sees the machine's /usr, not this checkout)
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": w.join("key"),
            "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no",
        }}},
    });
    std::fs::write(w.join("hosts.json"), inventory.to_string()).unwrap();
    // this build's binaries, stripped of their debug info (a quarter of the size: every run
    // checksums them on both sides)
    let bin_dir = &w.join("bin");
    std::fs::create_dir(bin_dir).unwrap();
    for (name, exe) in [
        ("duffy", env!("CARGO_BIN_EXE_duffy")),
        ("duffy-inventory", env!("CARGO_BIN_EXE_duffy-inventory")),
    ] {
        ok(&run(Command::new("strip")
            .arg("-o")
            .arg(bin_dir.join(name))
            .arg(exe)));
    }
    let site = serde_json::json!({
        "duffy_server_service_manager": "none",
        "duffy_server_binaries_src": bin_dir,
        "duffy_server_db_user": "postgres",
        "duffy_server_db_host": "/run/postgresql",
        "duffy_server_db_name": db.name,
        "duffy_server_app_port": port,
        "duffy_server_metaclient_port": legacy_port,
        "duffy_server_metaclient_usermap": {"6a5f2c7e-0000-4000-8000-00000000beef": "tenant1"},
        "duffy_server_nodepools": {
            "abstract": {"lab": {"mechanism": {"type": "ansible", "ansible": {
                "topdir": "/nonexistent", "provision": {"playbook": "p.yml"}}}}},
            "concrete": {"lab-a": {"extends": "lab", "fill-level": 3}},
        },
        "duffy_server_secrets": {"nodepools": {"abstract": {"lab": {"mechanism": {"ansible": {
            "extra-vars": {"api_password": "TopSecret-4711"}}}}}}},
    });
    std::fs::write(w.join("site.json"), site.to_string()).unwrap();
    let site_arg = format!("@{}", w.join("site.json").display());
    let hosts = w.join("hosts.json").display().to_string();
    let t0 = std::time::Instant::now();
    let deploy = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "-i",
            hosts.as_str(),
            "playbooks/deploy.yml",
            "-e",
            site_arg.as_str(),
        ];
        args.extend_from_slice(extra);
        let t = std::time::Instant::now();
        let v = playbook(w, &args);
        eprintln!(
            "deploy.yml {extra:?}: {:.1} s (test at {:.1} s)",
            t.elapsed().as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        v
    };

    // 1. check mode on the bare target: reports changes, changes nothing
    let before = snapshot(&TOUCHED);
    let v = deploy(&["--check"]);
    assert!(
        stat_changed(&v, "target") > 0,
        "check mode reported no change"
    );
    assert_eq!(snapshot(&TOUCHED), before, "check mode changed files");
    assert!(db.query_strings("SELECT to_regclass('public.nodes')::text")[0].is_none());

    // 2. the deployment
    let v = deploy(&[]);
    let changed = changed_tasks(&v);
    for t in [
        "Create the duffy user",
        "Install the binaries from the controller",
        "Write the configuration files",
        "Install the systemd units",
        "Run duffy migrate",
    ] {
        assert!(
            changed.iter().any(|c| c == t),
            "{t} did not change: {changed:?}"
        );
    }
    let out = v.to_string();
    assert!(
        !out.contains("TopSecret-4711") && !out.contains("6a5f2c7e-0000-4000-8000-00000000beef"),
        "a secret in ansible's output"
    );
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let duffy_line = passwd
        .lines()
        .find(|l| l.starts_with("duffy:"))
        .expect("the duffy user");
    assert!(
        duffy_line.ends_with(":/var/lib/duffy:/usr/sbin/nologin"),
        "{duffy_line}"
    );
    let mut files: Vec<String> = std::fs::read_dir("/etc/duffy")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "10_app.yaml",
            "20_metaclient.yaml",
            "50_database.yaml",
            "60_defaults.yaml",
            "70_nodepools.yaml",
            "75_scheduler.yaml",
            "80_secrets.yaml"
        ]
    );
    let ls = stdout(&run(Command::new("stat")
        .args(["-c", "%n %a %U:%G"])
        .arg("/etc/duffy")
        .args(files.iter().map(|f| format!("/etc/duffy/{f}")))));
    assert_eq!(
        ls,
        "/etc/duffy 750 root:duffy\n/etc/duffy/10_app.yaml 640 root:duffy\n/etc/duffy/20_metaclient.yaml 600 duffy:duffy\n\
         /etc/duffy/50_database.yaml 600 duffy:duffy\n/etc/duffy/60_defaults.yaml 640 root:duffy\n/etc/duffy/70_nodepools.yaml 640 root:duffy\n\
         /etc/duffy/75_scheduler.yaml 640 root:duffy\n/etc/duffy/80_secrets.yaml 600 duffy:duffy\n"
    );
    assert_eq!(
        std::fs::read("/usr/local/bin/duffy").unwrap(),
        std::fs::read(bin_dir.join("duffy")).unwrap()
    );
    // the deployed config is valid for duffy itself, and the role's migrate made the schema
    let check = ok(&duffy(Some(Path::new("/etc/duffy")), &["config", "check"]));
    assert!(check.contains("Concrete pools: lab-a\n"), "{check}");
    assert!(!check.contains("TopSecret-4711"), "{check}");
    assert_eq!(
        db.one("SELECT version_num FROM alembic_version"),
        "6654d536b836"
    );

    // the units: as in etc/systemd/, and systemd's own checker accepts them (this machine has
    // the binary and the user now)
    for u in UNITS {
        let installed =
            std::fs::read_to_string(format!("/etc/systemd/system/{u}.service")).unwrap();
        let shipped =
            std::fs::read_to_string(repo().join(format!("etc/systemd/{u}.service"))).unwrap();
        assert_eq!(installed, shipped, "{u}.service differs from etc/systemd/");
    }
    let o = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.map(|u| format!("/etc/systemd/system/{u}.service"))));
    assert!(
        o.status.success() && stderr(&o).trim().is_empty(),
        "systemd-analyze verify: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // each service started as its installed unit says (ExecStart, as User=/Group=, in
    // WorkingDirectory=, with Environment= and systemd's default PATH) and asked something
    let app = Unit::read("duffy-app");
    assert_eq!(
        app.exec,
        [
            "/usr/local/bin/duffy",
            "-c",
            "/etc/duffy",
            "serve",
            "--no-legacy"
        ]
    );
    let mut p = app.start();
    p.wait_listening(port);
    let (status, body) = http_get(port, "/api/v1/pools");
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "{\"action\":\"get\",\"pools\":[{\"name\":\"lab-a\",\"fill-level\":3}]}"
        )
    );
    // --no-legacy: the legacy port is duffy-metaclient's
    assert!(std::net::TcpStream::connect(("127.0.0.1", legacy_port)).is_err());
    drop(p);

    let legacy = Unit::read("duffy-metaclient");
    assert_eq!(legacy.exec[3..], ["serve-legacy"]);
    let mut p = legacy.start();
    p.wait_listening(legacy_port);
    assert_eq!(http_get(legacy_port, "/Inventory"), (200, "[]".to_string()));
    drop(p);

    // the scheduler fills lab-a (3 nodes, their jobs) and keeps its state in its home
    let sched = Unit::read("duffy-scheduler");
    assert_eq!(sched.exec[3..], ["scheduler"]);
    let mut p = sched.start();
    // (its playbook does not exist: the jobs fail and are retried, which is all this needs)
    p.wait_for(&db, "SELECT count(*) FROM nodes WHERE pool = 'lab-a'", "3");
    p.wait_for(
        &db,
        "SELECT coalesce(bool_or(log_path IS NOT NULL), false)::text FROM duffy_jobs",
        "true",
    );
    let owner = stdout(&run(Command::new("stat")
        .args(["-c", "%U %a"])
        .arg("/var/lib/duffy/runs")));
    assert_eq!(owner, "duffy 700\n", "{}", p.log());
    p.stop();
    assert!(p.log().contains("scheduler started"), "{}", p.log());

    // 3. a second run changes nothing
    let v = deploy(&[]);
    assert_eq!(
        stat_changed(&v, "target"),
        0,
        "second run changed: {:?}",
        changed_tasks(&v)
    );

    // 4. check mode after a variable change: reported, not made
    let before = snapshot(&TOUCHED);
    let v = deploy(&["--check", "-e", "duffy_server_app_port=1"]);
    assert_eq!(changed_tasks(&v), ["Write the configuration files"]);
    assert_eq!(snapshot(&TOUCHED), before, "check mode changed files");

    // 5. binaries from a URL (an HTTP server on the lab's gateway, which the node reaches),
    // checked against their sha256: only the missing one is downloaded
    std::fs::remove_file("/usr/local/bin/duffy-inventory").unwrap();
    let gw = lab.subnet.replace(".0/24", ".1");
    let http_port = std::net::TcpListener::bind((gw.as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            &gw,
            &http_port.to_string(),
            "--directory",
        ])
        .arg(bin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect((gw.as_str(), http_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "no HTTP server");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let sums = stdout(&run(Command::new("sha256sum")
        .arg(bin_dir.join("duffy"))
        .arg(bin_dir.join("duffy-inventory"))));
    let checksums: serde_json::Map<String, serde_json::Value> = sums
        .lines()
        .map(|l| {
            let (sum, path) = l.split_once("  ").unwrap();
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, serde_json::Value::from(format!("sha256:{sum}")))
        })
        .collect();
    std::fs::write(
        w.join("url.json"),
        serde_json::json!({
            "duffy_server_binaries_src": "",
            "duffy_server_binaries_url": format!("http://{gw}:{http_port}"),
            "duffy_server_binaries_checksums": checksums,
        })
        .to_string(),
    )
    .unwrap();
    let url_arg = format!("@{}", w.join("url.json").display());
    let v = deploy(&["-e", &url_arg]);
    let _ = http.kill();
    let _ = http.wait();
    assert_eq!(changed_tasks(&v), ["Download the binaries"]);
    assert_eq!(
        std::fs::read("/usr/local/bin/duffy-inventory").unwrap(),
        std::fs::read(bin_dir.join("duffy-inventory")).unwrap()
    );

    // the node goes with the guard; the overlays with the test
    drop(lab);
}
