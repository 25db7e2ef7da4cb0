//! PXE reinstall of bare-metal nodes (`playbooks/reinstall.yml`, `roles/pxe_reinstall`,
//! `roles/pxe_server`, `playbooks/metal-{provision,deprovision}.yml`) under a real ansible-core
//! (`.ci/ansible-venv.sh`), against a real BMC (OpenIPMI's `ipmi_sim`, `.ci/ipmi-sim.sh`),
//! a throw-away PostgreSQL database and the real dynamic inventory (`inventory/duffy.sh`).
//!
//! The node is a stand-in ([`FakeHost`]): a thread that watches the simulator's chassis (power
//! and boot device files) like firmware would. At power-on with the boot device PXE it "fetches"
//! its iPXE script from the rendered TFTP root by MAC; if that script is the installer, it
//! "installs" for a moment and then greets on its SSH port like OpenSSH; otherwise it boots "from
//! disk" (the old system) at once. So the test fails if the boot config is rendered too late,
//! the boot device is not set, the chassis is not cycled, or the playbook does not wait for the
//! new system. (A real sshd would add nothing here: the playbook only waits for the greeting.)
//!
//! Covered: `reinstall.yml -l <node>` by hand (check mode first: nothing written or switched;
//! then the files' contents, the chassis cycled with PXE as next boot cross-checked with
//! ipmitool, the node `failed → provisioning → ready` with `data.provision`), the failure path
//! (wrong BMC password: node `failed` with the reason in `data.error`, local boot restored,
//! the password in no output even at -vvv), refusals (no limit, a deployed node, bad MAC or
//! release), and a reuse-nodes metal pool run by the real `duffy scheduler --once`
//! (provision = reinstall → ready; retire → deprovision = reinstall → unused), and that the
//! example pool file passes `duffy config check`.
//!
//! `pxe_boot_of_a_vm_in_a_netns` does it for real (`.ci/pxe-lab.sh` installs qemu, iPXE ROMs,
//! dnsmasq and busybox and builds a small kernel + initrd): a network namespace of the test with
//! a bridge, dnsmasq started by the playbook's reload command on the rendered conf-dir (DHCP
//! reservation, boot file, TFTP root), busybox httpd for the kickstart and the boot files; the
//! simulator's chassis starts a TCG VM on power-on ([`VmHost`]), which PXE-boots through iPXE
//! into the test initrd; that "installer" fetches the kickstart named on its command line and
//! then answers on port 22 like OpenSSH, which the playbook waits for from the host.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::ipmi_sim::IpmiSim;
use common::*;

const BMC_USER: &str = "admin";
/// Distinctive, so that finding it anywhere is meaningful.
const BMC_PASSWORD: &str = "Bmc-s3cret-7Qx";
const WRONG_PASSWORD: &str = "Wr0ng-pw-K2z";
const POOL: &str = "metal-lab-pxe-centos-9s-x86_64";
/// How long the stand-in takes to "install": the window in which its SSH is down. The role
/// polls for that window after the power cycle ("Wait until the old system is down"); a real
/// install takes minutes, but with 1.5 s a loaded machine (ansible starting the next task
/// late) missed it and the test failed now and then.
const INSTALL_TIME: Duration = Duration::from_secs(6);

/// The module binaries Cargo built for this test.
const MODULES: &[(&str, &str)] = &[
    ("duffy_node", env!("CARGO_BIN_EXE_duffy_node")),
    ("ipmi_power", env!("CARGO_BIN_EXE_ipmi_power")),
];

/// A stand-in bare-metal node driven by the simulator's chassis (see the file comment).
struct FakeHost {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHost {
    /// `chassis`: the simulator's dir (files `power`, `boot`); `ipxe`: the node's rendered
    /// script; `ssh`: where it greets once up. Starts powered on, running its old system.
    fn start(chassis: &Path, ipxe: PathBuf, ssh: SocketAddr) -> FakeHost {
        std::fs::write(chassis.join("power"), "1\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (s, e, dir) = (stop.clone(), events.clone(), chassis.to_path_buf());
        let thread = std::thread::spawn(move || fake_host_loop(&dir, &ipxe, ssh, &s, &e));
        let h = FakeHost {
            stop,
            events,
            thread: Some(thread),
        };
        h.wait_event("up: SSH-2.0-OpenSSH_8.0 old-system", Duration::from_secs(5));
        h
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    fn wait_event(&self, prefix: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.events().iter().any(|e| e.starts_with(prefix)) {
            assert!(
                t.elapsed() < timeout,
                "no event {prefix:?}: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn fake_host_loop(
    chassis: &Path,
    ipxe: &Path,
    ssh: SocketAddr,
    stop: &AtomicBool,
    events: &Mutex<Vec<String>>,
) {
    let log = |s: String| events.lock().unwrap().push(s);
    let mut power = false;
    let mut listener: Option<(TcpListener, &'static str)> = None;
    let mut installing: Option<Instant> = None;
    let up = |banner: &'static str| -> (TcpListener, &'static str) {
        // the port may still be held by the previous system's socket for a moment
        let t = Instant::now();
        loop {
            match TcpListener::bind(ssh) {
                Ok(l) => {
                    l.set_nonblocking(true).unwrap();
                    return (l, banner);
                }
                Err(_) if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("fake host cannot listen on {ssh}: {e}"),
            }
        }
    };
    // the chassis script's calls, in order: a power cycle (off, then on a moment later) is
    // seen as two transitions however late this thread looks (sampling the `power` file can
    // miss the off on a loaded machine)
    let mut calls_seen = 0;
    let mut pending: std::collections::VecDeque<bool> = Default::default();
    while !stop.load(Ordering::SeqCst) {
        let calls = std::fs::read_to_string(chassis.join("calls.log")).unwrap_or_default();
        if calls.len() > calls_seen {
            let new = &calls[calls_seen..];
            let complete = new.rfind('\n').map_or(0, |i| i + 1);
            for line in new[..complete].lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("set") {
                    continue;
                }
                let words: Vec<&str> = w.collect();
                for kv in words.chunks(2) {
                    match kv {
                        ["power", v] => pending.push_back(*v == "1"),
                        ["shutdown", _] => pending.push_back(false),
                        _ => {}
                    }
                }
            }
            calls_seen += complete;
        }
        let now_on = match pending.pop_front() {
            Some(v) => v,
            // no call since: the file (the test sets it directly at the start)
            None => read_trim(&chassis.join("power")) == "1",
        };
        if power && !now_on {
            listener = None;
            installing = None;
            log("power off".into());
        } else if !power && now_on {
            let boot = read_trim(&chassis.join("boot"));
            let script = std::fs::read_to_string(ipxe).unwrap_or_default();
            if boot == "pxe" && script.contains("inst.ks=") {
                let kernel = script
                    .lines()
                    .find(|l| l.starts_with("kernel "))
                    .unwrap_or("")
                    .to_string();
                log(format!("power on, PXE installer: {kernel}"));
                installing = Some(Instant::now() + INSTALL_TIME);
            } else {
                log(format!("power on, boot {boot:?}: local disk"));
                let l = up("SSH-2.0-OpenSSH_8.0 old-system");
                log(format!("up: {}", l.1));
                listener = Some(l);
            }
        }
        power = now_on;
        if installing.is_some_and(|t| Instant::now() >= t) {
            installing = None;
            let l = up("SSH-2.0-OpenSSH_9.6 installed");
            log(format!("up: {}", l.1));
            listener = Some(l);
        }
        if let Some((l, banner)) = &listener {
            while let Ok((mut c, _)) = l.accept() {
                let _ = c.write_all(format!("{banner}\r\n").as_bytes());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's world: database, duffy config, BMC simulator, PXE dirs, a playbook topdir.
struct World {
    dir: tempfile::TempDir,
    db: TestDb,
    config: PathBuf,
    top: PathBuf,
    sim: IpmiSim,
    ssh_port: u16,
}

const PLAYBOOKS: &[&str] = &[
    "reinstall.yml",
    "metal-provision.yml",
    "metal-deprovision.yml",
];

impl World {
    /// `pool_extra`: more keys for the pool (indented by 6).
    fn new(pool_extra: &str) -> World {
        let db = TestDb::migrated();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // the playbooks as committed, with the roles and this build's module binaries (not
        // whatever modules/install.sh last put into modules/)
        let top = d.join("top");
        std::fs::create_dir_all(top.join("library")).unwrap();
        for p in PLAYBOOKS {
            std::fs::copy(repo().join("playbooks").join(p), top.join(p)).unwrap();
        }
        std::os::unix::fs::symlink(repo().join("roles"), top.join("roles")).unwrap();
        for (name, bin) in MODULES {
            std::os::unix::fs::symlink(bin, top.join("library").join(name)).unwrap();
        }
        for sub in ["tftp", "dnsmasq", "http", "home", "logs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let sim = IpmiSim::start(&[(BMC_USER, BMC_PASSWORD, "admin")]);
        let ssh_port = free_port();
        let site = site_vars(d, ssh_port);
        std::fs::write(d.join("site.yml"), &site).unwrap();
        let config = d.join("duffy.yaml");
        let extra_vars: String = site
            .lines()
            .map(|l| format!("            {l}\n"))
            .collect::<String>();
        std::fs::write(
            &config,
            format!(
                "database:\n  sqlalchemy:\n    sync_url: {url}\n{DEFAULTS_YAML}\
                 ipmi:\n  credentials:\n    lab: {{user: {BMC_USER}, password: {BMC_PASSWORD}}}\n\
                 scheduler:\n  ansible-playbook: {ap}\n  job-log-dir: {logs}\n  state-dir: {state}\n  max-attempts: 1\n\
                 \x20 playbook-timeout: 120\n  lease: 60\n\
                 nodepools:\n  concrete:\n    {POOL}:\n      fill-level: 1\n      architecture: x86_64\n\
                 \x20     release: 9s\n      contextualize: none\n\
                 \x20     reuse-nodes:\n        architecture: \"{{{{ architecture }}}}\"\n{pool_extra}\
                 \x20     mechanism:\n        type: ansible\n        ansible:\n          topdir: {top}\n\
                 \x20         extra-vars:\n            duffy_config: {cfg}\n\
                 \x20           pxe_release: \"{{{{ release }}}}\"\n            pxe_arch: \"{{{{ architecture }}}}\"\n\
                 {extra_vars}\
                 \x20         provision: {{playbook: metal-provision.yml}}\n\
                 \x20         deprovision: {{playbook: metal-deprovision.yml}}\n",
                url = db.url,
                ap = ansible_bin().join("ansible-playbook").display(),
                logs = d.join("logs").display(),
                state = d.join("state").display(),
                top = top.display(),
                cfg = d.join("duffy.yaml").display(),
            ),
        )
        .unwrap();
        World {
            dir,
            db,
            config,
            top,
            sim,
            ssh_port,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A node's loopback address (its "SSH" listens there on `ssh_port`).
    fn node_ip(&self, i: u8) -> String {
        format!("127.93.{}.{}", self.ssh_port % 250 + 1, i)
    }

    fn mac(i: u8) -> String {
        format!("52:54:00:9a:0c:{i:02x}")
    }

    /// Insert node `n<i>.metal.test` with the data `duffy_node` would store.
    fn add_node(&self, i: u8, state: &str, pool: Option<&str>, ipmi: &str) {
        self.db.exec(&format!(
            "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data)
             VALUES ('n{i}.metal.test', '{}', '{state}', {}, true,
                     '{{\"architecture\": \"x86_64\", \"mac\": \"{}\", \"ipmi\": {ipmi}}}')",
            self.node_ip(i),
            pool.map(|p| format!("'{p}'")).unwrap_or("NULL".into()),
            Self::mac(i).to_uppercase(),
        ));
    }

    fn bmc_json(&self) -> String {
        format!(
            "{{\"address\": \"127.0.0.1\", \"port\": {}, \"user\": \"{BMC_USER}\"}}",
            self.sim.port
        )
    }

    fn fake_host(&self, i: u8) -> FakeHost {
        let ipxe = self
            .path("tftp")
            .join(format!("{}.ipxe", Self::mac(i).replace(':', "-")));
        let ssh: SocketAddr = format!("{}:{}", self.node_ip(i), self.ssh_port)
            .parse()
            .unwrap();
        FakeHost::start(self.sim.dir.path(), ipxe, ssh)
    }

    /// `ansible-playbook -i inventory/duffy.sh top/<playbook> -e @site.yml <args>`.
    fn playbook(&self, playbook: &str, args: &[&str], bmc_password: &str) -> Output {
        let home = self.path("home");
        let mut cmd = Command::new(ansible_bin().join("ansible-playbook"));
        cmd.current_dir(&self.top)
            .env_remove("ANSIBLE_CONFIG")
            .env_remove("ANSIBLE_LIBRARY")
            .env_remove("ANSIBLE_STDOUT_CALLBACK")
            .env_remove("DUFFY_DATABASE_URL")
            .env("DUFFY_CONFIG", &self.config)
            .env("DUFFY_INVENTORY_BIN", env!("CARGO_BIN_EXE_duffy-inventory"))
            .env("DUFFY_BMC_PASSWORD", bmc_password)
            .env("HOME", &home)
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "1")
            .env("ANSIBLE_DEPRECATION_WARNINGS", "0")
            .arg("-i")
            .arg(repo().join("inventory/duffy.sh"))
            .arg(playbook)
            .arg("-e")
            .arg(format!("@{}", self.path("site.yml").display()))
            .args(args)
            .stdin(Stdio::null());
        cmd.output().expect("run ansible-playbook")
    }

    fn q(&self, sql: &str) -> Vec<String> {
        self.db.rows(sql)
    }

    fn one(&self, sql: &str) -> String {
        self.db.one(sql)
    }

    fn history(&self, host: &str) -> Vec<String> {
        self.q(&format!(
            "SELECT coalesce(h.from_state::text, '-') || '>' || h.to_state FROM duffy_node_history h
             JOIN nodes n ON n.id = h.node_id WHERE n.hostname = '{host}' ORDER BY h.id"
        ))
    }

    /// Every file under the world's directory that contains `needle`.
    fn files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    if let Ok(b) = std::fs::read(&p) {
                        if String::from_utf8_lossy(&b).contains(needle) {
                            found.push(p);
                        }
                    }
                }
            }
        }
        found
    }

    fn file(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
}

/// The site settings an operator keeps in a vars file (`-e @site.yml`), here for `dir`.
fn site_vars(dir: &Path, ssh_port: u16) -> String {
    format!(
        "pxe_tftp_root: {d}/tftp\npxe_dnsmasq_dir: {d}/dnsmasq\npxe_http_root: {d}/http\n\
         pxe_http_url: http://10.99.0.1:8080/duffy-pxe\npxe_dnsmasq_reload_command: \"\"\n\
         pxe_ssh_keys: [\"{SSH_KEY}\"]\npxe_reinstall_ssh_port: {ssh_port}\n\
         pxe_reinstall_down_timeout: 20\npxe_reinstall_ssh_timeout: 30\npxe_bmc_timeout: 1\n\
         pxe_bmc_retries: 1\npxe_bmc_power_wait: 10\n",
        d = dir.display()
    )
}

fn out(o: &Output) -> String {
    format!("{}\n{}", stdout(o), stderr(o))
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}", out(o));
}

#[test]
fn reinstall_by_hand_check_mode_then_for_real() {
    if !fresh_run_view("reinstall_by_hand_check_mode_then_for_real") {
        return;
    }
    let w = World::new("");
    w.add_node(1, "failed", Some(POOL), &w.bmc_json());
    let host = w.fake_host(1);
    let mac = World::mac(1);
    let id = mac.replace(':', "-");

    // check mode: nothing written, nothing switched, the node untouched
    let o = w.playbook(
        "reinstall.yml",
        &["-l", "n1.metal.test", "--check", "--diff"],
        BMC_PASSWORD,
    );
    assert_ok(&o, "reinstall.yml --check");
    assert!(
        out(&o).contains("would set boot device pxe, then power cycle"),
        "{}",
        out(&o)
    );
    for d in ["tftp", "dnsmasq", "http"] {
        assert_eq!(
            std::fs::read_dir(w.path(d)).unwrap().count(),
            0,
            "check mode wrote into {d}"
        );
    }
    assert!(
        w.sim.calls().iter().all(|c| c.starts_with("get")),
        "{:?}",
        w.sim.calls()
    );
    assert!(w.history("n1.metal.test").is_empty());

    // for real
    let t = Instant::now();
    let o = w.playbook("reinstall.yml", &["-l", "n1.metal.test"], BMC_PASSWORD);
    assert_ok(&o, "reinstall.yml");
    let took = t.elapsed();
    let text = out(&o);
    assert!(text.contains("n1.metal.test              : ok="), "{text}");
    assert!(!text.contains(BMC_PASSWORD), "BMC password in the output");

    // the stand-in was power-cycled into the installer, then came up installed
    let ev = host.events();
    let kernel = format!(
        "power on, PXE installer: kernel http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/images/pxeboot/vmlinuz initrd=initrd.img inst.ks=http://10.99.0.1:8080/duffy-pxe/ks/{id}.ks inst.repo=http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os inst.text ip=dhcp"
    );
    assert_eq!(
        ev[2..].iter().map(String::as_str).collect::<Vec<_>>(),
        vec![
            "power off",
            kernel.as_str(),
            "up: SSH-2.0-OpenSSH_9.6 installed"
        ],
        "{ev:?}"
    );
    // the chassis: boot device set before the power changed, then cycled (off, on)
    let calls: Vec<String> = w
        .sim
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("set"))
        .collect();
    assert_eq!(
        calls,
        vec!["set boot pxe", "set power 0", "set power 1"],
        "{calls:?}"
    );
    let who = (BMC_USER, BMC_PASSWORD);
    assert!(w
        .sim
        .ipmitool(who, &["chassis", "bootparam", "get", "5"])
        .contains("Boot Device Selector : Force PXE"));
    assert_eq!(
        w.sim.ipmitool(who, &["chassis", "power", "status"]).trim(),
        "Chassis Power is on"
    );

    // the files: DHCP reservation + boot file, local boot again, the kickstart
    let frag = w.file(&format!("dnsmasq/duffy-{id}.conf"));
    let tag = format!("duffy_{}", mac.replace(':', ""));
    assert!(
        frag.contains(&format!(
            "\ndhcp-host={mac},set:{tag},{},n1\n",
            w.node_ip(1)
        )),
        "{frag}"
    );
    assert!(
        frag.contains(&format!("\ndhcp-boot=tag:{tag},tag:duffy_ipxe,{id}.ipxe\n")),
        "{frag}"
    );
    let common = w.file("dnsmasq/duffy-pxe-common.conf");
    assert!(
        common.contains("\ndhcp-match=set:duffy_ipxe,175\n"),
        "{common}"
    );
    assert!(
        common.contains(&format!(
            "\nenable-tftp\ntftp-root={}\n",
            w.path("tftp").display()
        )),
        "{common}"
    );
    let ipxe = w.file(&format!("tftp/{id}.ipxe"));
    assert!(ipxe.starts_with("#!ipxe\n"), "{ipxe}");
    assert!(
        ipxe.contains("\nexit\n") && !ipxe.contains("kernel"),
        "{ipxe}"
    );
    let ks = w.file(&format!("http/ks/{id}.ks"));
    for want in [
        "\ntext\n",
        "\nurl --url=http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os\n",
        "\nrepo --name=AppStream --baseurl=http://mirror.stream.centos.org/9-stream/AppStream/x86_64/os\n",
        "\nnetwork --bootproto=dhcp --device=link --activate --onboot=yes --hostname=n1.metal.test\n",
        "\nrootpw --lock\n",
        &format!("\nsshkey --username=root \"{SSH_KEY}\"\n"),
        "\nreboot\n",
        "PasswordAuthentication no",
    ] {
        assert!(ks.contains(want), "kickstart lacks {want:?}:\n{ks}");
    }
    assert!(!ks.contains("rootpw --plaintext") && !ks.contains("--iscrypted"));
    assert_eq!(
        w.files_containing(BMC_PASSWORD),
        vec![w.config.clone()],
        "the BMC password is only in the duffy config"
    );

    // the node: out of rotation while reinstalled, then back, with its provision data
    assert_eq!(
        w.history("n1.metal.test"),
        vec!["failed>provisioning", "provisioning>ready"]
    );
    assert_eq!(
        w.one(
            "SELECT state || ' ' || pool || ' ' || (data->'provision'->>'mac') || ' '
                    || (data->'provision'->>'release') || ' ' || (data->'provision'->>'ipaddr')
                    || ' ' || ((data->'error') IS NOT NULL)::text FROM nodes"
        ),
        format!("ready {POOL} {mac} 9s {} false", w.node_ip(1))
    );
    eprintln!("reinstall.yml took {took:?}");
}

#[test]
fn wrong_bmc_password_fails_the_node_with_the_reason_and_never_shows_it() {
    if !fresh_run_view("wrong_bmc_password_fails_the_node_with_the_reason_and_never_shows_it") {
        return;
    }
    let w = World::new("");
    // a spare node (no pool): taken out of rotation, and failed with the reason
    w.add_node(2, "unused", None, &w.bmc_json());
    let host = w.fake_host(2);
    let o = w.playbook(
        "reinstall.yml",
        &["-l", "n2.metal.test", "-e", "pxe_release=9s", "-vvv"],
        WRONG_PASSWORD,
    );
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    assert!(!text.contains(WRONG_PASSWORD), "BMC password in the output");
    assert!(!text.contains(BMC_PASSWORD));
    assert_eq!(w.history("n2.metal.test"), vec!["unused>failed"]);
    let detail = w.one("SELECT data->'error'->>'detail' FROM nodes");
    assert!(
        detail.starts_with(
            "n2.metal.test: PXE reinstall failed at 'Fail when the BMC refused': authentication failed for user \"admin\" at 127.0.0.1:"
        ) && detail.contains(": wrong password"),
        "{detail}\n{text}"
    );
    assert!(text.contains(&detail), "{text}");
    // nothing was switched; the boot config is back to local boot
    assert!(
        w.sim.calls().iter().all(|c| c.starts_with("get")),
        "{:?}",
        w.sim.calls()
    );
    assert_eq!(host.events().len(), 2, "{:?}", host.events());
    let ipxe = w.file(&format!("tftp/{}.ipxe", World::mac(2).replace(':', "-")));
    assert!(ipxe.contains("\nexit\n"), "{ipxe}");
    assert!(w.files_containing(WRONG_PASSWORD).is_empty());
}

#[test]
fn refusals_name_the_problem() {
    if !fresh_run_view("refusals_name_the_problem") {
        return;
    }
    let w = World::new("");
    let bmc = w.bmc_json();
    w.add_node(3, "deployed", Some(POOL), &bmc);
    w.add_node(4, "failed", Some(POOL), &bmc);
    w.db.exec("UPDATE nodes SET data = jsonb_set(data::jsonb, '{mac}', '\"52:54:00:zz:00:04\"')::json WHERE hostname = 'n4.metal.test'");
    w.add_node(
        5,
        "failed",
        Some(POOL),
        "{\"port\": 623, \"user\": \"admin\"}",
    );
    w.add_node(6, "ready", Some(POOL), &bmc);

    // no limit: refused before anything happens
    let o = w.playbook("reinstall.yml", &[], BMC_PASSWORD);
    assert!(!o.status.success());
    assert!(
        out(&o).contains("reinstall.yml needs the nodes to reinstall: -l <node>"),
        "{}",
        out(&o)
    );

    let o = w.playbook(
        "reinstall.yml",
        &[
            "-l",
            "n3.metal.test,n4.metal.test,n5.metal.test,n6.metal.test",
        ],
        BMC_PASSWORD,
    );
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    for want in [
        "n3.metal.test: node is deployed: never reinstalled while lent to a tenant",
        "n6.metal.test: node is ready: reinstall.yml takes nodes in failed, unused (pxe_reinstall_states)",
        "pxe_mac: expected a MAC address like 52:54:00:12:34:56 (node data key mac), got \"52:54:00:zz:00:04\"",
        "duffy_data.ipmi.address: the BMC address is missing in the node data",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    // the lent and the ready node untouched; the broken ones failed with the reason
    assert_eq!(
        w.q("SELECT hostname || ' ' || state || ' ' || coalesce(data->'error'->>'detail', '-') FROM nodes ORDER BY id"),
        vec![
            "n3.metal.test deployed -".to_string(),
            "n4.metal.test failed n4.metal.test: PXE reinstall failed at 'Check the PXE variables': pxe_mac: expected a MAC address like 52:54:00:12:34:56 (node data key mac), got \"52:54:00:zz:00:04\"".into(),
            "n5.metal.test failed n5.metal.test: PXE reinstall failed at 'Check the node\'s release, architecture and BMC settings': duffy_data.ipmi.address: the BMC address is missing in the node data".into(),
            "n6.metal.test ready -".into(),
        ]
    );
    assert!(w.sim.calls().is_empty(), "{:?}", w.sim.calls());

    // a release outside the list
    let o = w.playbook(
        "reinstall.yml",
        &["-l", "n4.metal.test", "-e", "pxe_release=7"],
        BMC_PASSWORD,
    );
    assert!(
        out(&o).contains("pxe_release: expected one of 8s, 9s, 10s (CentOS Stream), got \"7\""),
        "{}",
        out(&o)
    );
}

/// Run `f` with the library's view of `w` (config, database pool), on a thread of its own.
fn with_lib<T: Send + 'static>(
    w: &World,
    f: impl FnOnce(
            Arc<duffy::config::Config>,
            duffy::db::Db,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>
        + Send
        + 'static,
) -> T {
    let (path, url) = (w.config.clone(), w.db.url.clone());
    std::thread::spawn(move || {
        duffy::db::block_on(async move {
            let cfg = Arc::new(duffy::config::load_from(&[&path]).unwrap());
            let db = duffy::db::Db::connect(&url, 2).await.unwrap();
            f(cfg, db).await
        })
    })
    .join()
    .unwrap()
}

/// A tenant's session of one node of `pool`, then retired (as `PUT /sessions/{id}` does).
fn lend_and_retire(w: &World, pool: &str) {
    let pool = pool.to_string();
    with_lib(w, move |cfg, db| {
        Box::pin(async move {
            let (t, _) = duffy::tenant::create(
                &db,
                &cfg.defaults,
                &duffy::tenant::NewTenant {
                    name: "metaltenant".into(),
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
            let spec = duffy::alloc::NodesSpec { pool, quantity: 1 };
            let s = duffy::alloc::create(&db, &cfg, &t, None, &[spec])
                .await
                .unwrap();
            let mut conn = db.get().await.unwrap();
            let tx = conn.transaction().await.unwrap();
            duffy::alloc::retire_locked(&*tx, &cfg, s.row.id, "test")
                .await
                .unwrap();
            tx.commit().await.unwrap();
        })
    })
}

#[test]
fn metal_pool_provisioned_and_wiped_by_the_scheduler() {
    if !fresh_run_view("metal_pool_provisioned_and_wiped_by_the_scheduler") {
        return;
    }
    let w = World::new("");
    // the node as an operator registers it: duffy_node, BMC credential named in the config
    std::fs::write(
        w.top.join("register.yml"),
        format!(
            "- hosts: localhost\n  gather_facts: false\n  tasks:\n\
             \x20   - name: register\n      duffy_node:\n        hostname: n7.metal.test\n\
             \x20       ipaddr: {ip}\n        reusable: true\n        state: unused\n\
             \x20       config: {cfg}\n        data:\n          architecture: x86_64\n\
             \x20         mac: \"{mac}\"\n          ipmi: {{address: 127.0.0.1, port: {port}, credential: lab}}\n",
            ip = w.node_ip(7),
            cfg = w.config.display(),
            mac = World::mac(7),
            port = w.sim.port,
        ),
    )
    .unwrap();
    let o = Command::new(ansible_bin().join("ansible-playbook"))
        .current_dir(&w.top)
        .env("HOME", w.path("home"))
        .env("ANSIBLE_HOME", w.path("home"))
        .env_remove("ANSIBLE_CONFIG")
        .args(["-i", "localhost,", "-c", "local", "register.yml"])
        .output()
        .unwrap();
    assert_ok(&o, "register.yml");
    let host = w.fake_host(7);

    let once = || {
        let t = Instant::now();
        let o = duffy_cmd(Some(&w.config), &["scheduler", "--once"])
            .env("DUFFY_LOG", "info")
            .env("ANSIBLE_HOME", w.path("home"))
            .env_remove("DUFFY_BMC_PASSWORD")
            .output()
            .unwrap();
        let logs: String = std::fs::read_dir(w.path("logs"))
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect();
        assert!(o.status.success(), "scheduler --once: {}\n{logs}", out(&o));
        eprintln!("duffy scheduler --once took {:?}", t.elapsed());
        let so = stdout(&o);
        if !so.contains("done: 1,") {
            eprintln!(
                "chassis calls: {:?}\nhost events: {:?}",
                w.sim.calls(),
                host.events()
            );
        }
        (so, logs)
    };

    // provision = reinstall; the node is ready in the pool with its provision data
    let (so, logs) = once();
    assert!(so.contains("done: 1,"), "{so}\n{logs}");
    assert_eq!(
        w.one("SELECT state || ' ' || pool FROM nodes"),
        format!("ready {POOL}"),
        "{logs}"
    );
    let provision = w.one("SELECT data->>'provision' FROM nodes");
    let p: serde_json::Value = serde_json::from_str(&provision).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"hostname": "n7.metal.test", "ipaddr": w.node_ip(7),
            "mac": World::mac(7), "release": "9s", "arch": "x86_64"})
    );
    let installs = |h: &FakeHost| {
        h.events()
            .iter()
            .filter(|e| e.starts_with("power on, PXE installer: kernel http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os/images/pxeboot/vmlinuz"))
            .count()
    };
    assert_eq!(installs(&host), 1, "{:?}", host.events());

    // a tenant uses it; the retired node is wiped (reinstalled) and returned unused
    lend_and_retire(&w, POOL);
    assert_eq!(w.one("SELECT state FROM nodes"), "deprovisioning");
    let (so, logs) = once();
    assert!(so.contains("done: 1,"), "{so}\n{logs}");
    assert_eq!(
        w.one("SELECT state || ' ' || coalesce(pool, '-') || ' ' || ((data->'provision') IS NULL)::text FROM nodes"),
        "unused - true",
        "{logs}"
    );
    assert_eq!(installs(&host), 2, "{:?}", host.events());
    assert_eq!(
        w.q("SELECT kind || ' ' || state FROM duffy_jobs ORDER BY id"),
        vec!["provision done", "deprovision done"]
    );
    assert_eq!(
        w.history("n7.metal.test"),
        vec![
            "->unused",
            "unused>provisioning",
            "provisioning>ready",
            "ready>contextualizing",
            "contextualizing>deployed",
            "deployed>deprovisioning",
            "deprovisioning>unused"
        ]
    );
    assert!(!logs.contains(BMC_PASSWORD));
    assert_eq!(w.files_containing(BMC_PASSWORD), vec![w.config.clone()]);
}

/// `.ci/pxe-lab.sh`: qemu, iPXE ROMs, dnsmasq, busybox; the test kernel and initrd. Its dir.
fn pxe_lab_files() -> PathBuf {
    let dir = std::env::var_os("DUFFY_PXE_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/pxe-lab"));
    let o = Command::new("bash")
        .arg(repo().join(".ci/pxe-lab.sh"))
        .env("DUFFY_PXE_LAB", &dir)
        .stdin(Stdio::null())
        .output()
        .expect("run .ci/pxe-lab.sh");
    assert!(o.status.success(), ".ci/pxe-lab.sh failed: {}", out(&o));
    dir
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", out(&o));
}

/// A network namespace of this test with a bridge `br0` (`<net>.1/24`) joining the VM's tap
/// and a veth to the host (`<net>.2/24` on the host side, IPv6 off there so the lab's router
/// advertisements never reach the host's routes), busybox httpd serving `http/` on
/// `<net>.1:8080`, and a script that (re)starts dnsmasq on `br0` with the rendered conf-dir
/// (the playbook's `pxe_dnsmasq_reload_command`). Everything is removed on drop.
struct PxeLab {
    ns: String,
    veth: String,
    net: String,
    dnsmasq_pid: PathBuf,
    httpd: Option<std::process::Child>,
}

impl PxeLab {
    fn new(w: &World) -> PxeLab {
        let pid = std::process::id();
        let used = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["-4", "-o", "addr"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let k = (0..200)
            .map(|i| 20 + (pid + i) % 200)
            .find(|k| !used.contains(&format!(" 10.232.{k}.")))
            .expect("a free 10.232.x.0/24");
        let mut lab = PxeLab {
            ns: format!("dpxe{pid}"),
            veth: format!("dpxe{pid}h"),
            net: format!("10.232.{k}"),
            dnsmasq_pid: w.path("dnsmasq.pid"),
            httpd: None,
        };
        let (ns, veth, net) = (lab.ns.clone(), lab.veth.clone(), lab.net.clone());
        sh(&["ip", "netns", "add", &ns]);
        let n = |args: &[&str]| {
            let mut v = vec!["ip", "-n", &ns];
            v.extend_from_slice(args);
            sh(&v);
        };
        n(&["link", "set", "lo", "up"]);
        n(&["link", "add", "br0", "type", "bridge"]);
        n(&["addr", "add", &format!("{net}.1/24"), "dev", "br0"]);
        n(&["addr", "add", &format!("fd00:232:{k}::1/64"), "dev", "br0"]);
        n(&["link", "set", "br0", "up"]);
        n(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
        n(&["link", "set", "tap0", "master", "br0", "up"]);
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "vh", "netns", &ns,
        ]);
        sh(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{veth}.disable_ipv6=1"),
        ]);
        sh(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", &veth]);
        sh(&["ip", "link", "set", &veth, "up"]);
        n(&["link", "set", "vh", "master", "br0", "up"]);
        lab.httpd = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "busybox", "httpd", "-f"])
                .args(["-p", &format!("{net}.1:8080"), "-h"])
                .arg(w.path("http"))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let script = w.path("restart-dnsmasq.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -eu\nP={pid}\n\
                 if [ -f \"$P\" ]; then kill \"$(cat \"$P\")\" 2>/dev/null || true; fi\n\
                 while [ -f \"$P\" ] && kill -0 \"$(cat \"$P\")\" 2>/dev/null; do sleep 0.1; done\n\
                 exec ip netns exec {ns} dnsmasq --conf-file=/dev/null --user=root --port=0 \
                 --interface=br0 --bind-interfaces \
                 --dhcp-range={net}.100,{net}.150,255.255.255.0,1h \
                 --dhcp-range=::,constructor:br0,ra-only --enable-ra \
                 --conf-dir={conf},*.conf --log-dhcp --log-facility={log} --pid-file=\"$P\"\n",
                pid = lab.dnsmasq_pid.display(),
                conf = w.path("dnsmasq").display(),
                log = w.path("dnsmasq.log").display(),
            ),
        )
        .unwrap();
        sh(&["chmod", "+x", &script.display().to_string()]);
        lab
    }
}

impl Drop for PxeLab {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.dnsmasq_pid) {
            let _ = Command::new("kill").arg(p.trim()).status();
        }
        if let Some(mut h) = self.httpd.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

/// The chassis of `sim` drives a TCG VM in `ns`: power on starts qemu (network boot when the
/// boot device is PXE), power off kills it; its serial console goes to `serial`.
struct VmHost {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VmHost {
    fn start(chassis: &Path, ns: &str, mac: &str, serial: PathBuf) -> VmHost {
        std::fs::write(chassis.join("power"), "0\n").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, dir, ns, mac) = (
            stop.clone(),
            chassis.to_path_buf(),
            ns.to_string(),
            mac.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let mut vm: Option<std::process::Child> = None;
            while !s.load(Ordering::SeqCst) {
                let on = read_trim(&dir.join("power")) == "1";
                if on && vm.is_none() {
                    let boot = if read_trim(&dir.join("boot")) == "pxe" {
                        "n"
                    } else {
                        "c"
                    };
                    vm = Some(
                        Command::new("ip")
                            .args(["netns", "exec", &ns, "qemu-system-x86_64"])
                            .args(["-accel", "tcg", "-m", "512", "-display", "none"])
                            .args(["-nodefaults", "-no-reboot", "-boot", boot])
                            .arg("-chardev")
                            .arg(format!("file,id=ser0,path={},append=on", serial.display()))
                            .args(["-serial", "chardev:ser0"])
                            .args(["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"])
                            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .expect("start qemu"),
                    );
                } else if !on {
                    if let Some(mut c) = vm.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(mut c) = vm.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        });
        VmHost {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for VmHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn pxe_boot_of_a_vm_in_a_netns() {
    if !fresh_run_view("pxe_boot_of_a_vm_in_a_netns") {
        return;
    }
    let t0 = Instant::now();
    let files = pxe_lab_files();
    let setup = t0.elapsed();
    let w = World::new("");
    let lab = PxeLab::new(&w);
    let net = lab.net.clone();
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::copy(files.join(f), w.path("http").join(f)).unwrap();
    }
    std::fs::write(
        w.path("lab.yml"),
        format!(
            "pxe_http_url: http://{net}.1:8080\npxe_kernel_url: http://{net}.1:8080/vmlinuz\n\
             pxe_initrd_url: http://{net}.1:8080/initrd.gz\npxe_kernel_args: console=ttyS0 panic=-1\n\
             pxe_dnsmasq_reload_command: {}\npxe_reinstall_ssh_port: 22\n\
             pxe_reinstall_ssh_timeout: 150\n",
            w.path("restart-dnsmasq.sh").display()
        ),
    )
    .unwrap();
    let mac = World::mac(9);
    let ip = format!("{net}.50");
    w.db.exec(&format!(
        "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable, data)
         VALUES ('n9.metal.test', '{ip}', 'failed', '{POOL}', true,
                 '{{\"architecture\": \"x86_64\", \"mac\": \"{mac}\", \"ipmi\": {}}}')",
        w.bmc_json()
    ));
    let serial = w.path("serial.log");
    let _vm = VmHost::start(w.sim.dir.path(), &lab.ns, &mac, serial.clone());

    let t = Instant::now();
    let lab_vars = format!("@{}", w.path("lab.yml").display());
    let o = w.playbook(
        "reinstall.yml",
        &["-l", "n9.metal.test", "-e", &lab_vars],
        BMC_PASSWORD,
    );
    let took = t.elapsed();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    let dhcp = std::fs::read_to_string(w.path("dnsmasq.log")).unwrap_or_default();
    assert!(
        o.status.success(),
        "{}\nserial console:\n{console}\ndnsmasq:\n{dhcp}",
        out(&o)
    );
    let id = mac.replace(':', "-");
    let lines: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("DUFFY-PXE-LAB: "))
        .collect();
    let ks_url = format!("http://{net}.1:8080/ks/{id}.ks");
    assert_eq!(
        lines,
        vec![
            format!("booted; cmdline: initrd=initrd.img inst.ks={ks_url} inst.repo=http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os inst.text ip=dhcp console=ttyS0 panic=-1").as_str(),
            &format!("address {ip}/24"),
            &format!("kickstart fetched: {ks_url}"),
            "ks: url --url=http://mirror.stream.centos.org/9-stream/BaseOS/x86_64/os",
            "ks: network --bootproto=dhcp --device=link --activate --onboot=yes --hostname=n9.metal.test",
            "ks: rootpw --lock",
            &format!("ks: sshkey --username=root \"{SSH_KEY}\""),
            "installed, sshd up",
        ],
        "{console}"
    );
    // DHCP from the rendered reservation, the boot script by TFTP from the rendered tftp root
    assert!(
        dhcp.contains(&format!("DHCPACK(br0) {ip} {mac} n9")),
        "{dhcp}"
    );
    assert!(
        dhcp.contains(&format!(
            "sent {}/{id}.ipxe to {ip}",
            w.path("tftp").display()
        )),
        "{dhcp}"
    );
    let ipxe = w.file(&format!("tftp/{id}.ipxe"));
    assert!(ipxe.contains("\nexit\n"), "{ipxe}");
    assert_eq!(w.one("SELECT state FROM nodes"), "ready", "{}", out(&o));
    eprintln!(
        "pxe-lab.sh {setup:?}; reinstall.yml with a real PXE boot {took:?}; whole test {:?}",
        t0.elapsed()
    );
}

#[test]
fn example_metal_pool_config_checks() {
    let o = duffy(
        None,
        &[
            "config",
            "check",
            "-c",
            &repo().join("etc/duffy.yaml").display().to_string(),
            "-c",
            &repo()
                .join("etc/pools/metal-pxe.yaml")
                .display()
                .to_string(),
        ],
    );
    assert!(o.status.success(), "{}", out(&o));
    let text = stdout(&o);
    assert!(
        text.contains("metal-lab-pxe-centos-9s-x86_64")
            && text.contains("playbook: metal-provision.yml")
            && text.contains("playbook: metal-deprovision.yml"),
        "{text}"
    );
    // the playbooks it names exist next to the roles they use
    for p in [
        "metal-provision.yml",
        "metal-deprovision.yml",
        "reinstall.yml",
    ] {
        assert!(repo().join("playbooks").join(p).is_file(), "{p}");
    }
    for r in ["pxe_server", "pxe_reinstall"] {
        assert!(repo()
            .join("playbooks/roles")
            .join(r)
            .join("tasks/main.yml")
            .is_file());
    }
}
