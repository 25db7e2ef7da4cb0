//! A real BMC for tests: OpenIPMI's `ipmi_sim` on 127.0.0.1 with its own temp dir and free UDP
//! port, killed on drop. Its chassis keeps power and boot device in files and logs every call.
//! `.ci/ipmi-sim.sh` installs it (run once per test binary; tests never skip).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Runs `.ci/ipmi-sim.sh` once per test binary; panics with its output if that fails.
pub fn ensure_installed() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let script = super::repo().join(".ci/ipmi-sim.sh");
        let o = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} failed ({}): {}{}",
                script.display(),
                o.status,
                super::stdout(&o),
                super::stderr(&o)
            ))
        }
    });
    if let Err(e) = r {
        panic!("these tests need OpenIPMI's ipmi_sim and ipmitool (.ci/ipmi-sim.sh): {e}");
    }
}

/// The chassis: power and boot device kept in files next to it, every call logged.
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
D=$(dirname "$0"); shift; op=$1; shift
echo "$op $*" >> "$D/calls.log"
if [ "$op" = get ]; then
  for k in "$@"; do case $k in
    power) echo "power:$(cat "$D/power" 2>/dev/null || echo 0)";;
    boot) echo "boot:$(cat "$D/boot" 2>/dev/null || echo none)";;
  esac; done
  exit 0
fi
while [ $# -ge 2 ]; do case $1 in
  power) echo "$2" > "$D/power";;
  shutdown) echo 0 > "$D/power";;
  boot) echo "$2" > "$D/boot";;
esac; shift 2; done
"#;

/// One BMC account: (name, password, privilege level `admin|operator|user`).
pub type User<'a> = (&'a str, &'a str, &'a str);

/// One running `ipmi_sim`.
pub struct IpmiSim {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Child,
}

impl IpmiSim {
    /// Start a simulator with these accounts (user numbers 2, 3, …) and wait until it answers.
    pub fn start(users: &[User]) -> IpmiSim {
        ensure_installed();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let script = d.join("chassis.sh");
        std::fs::write(&script, CHASSIS_SCRIPT).unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        std::fs::create_dir(d.join("state")).unwrap();
        // a free UDP port: bind :0, note it, release it for ipmi_sim
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accounts: String = users
            .iter()
            .enumerate()
            .map(|(i, (name, pw, level))| {
                format!(
                    "  user {} true \"{name}\" \"{pw}\" {level} 10 none md2 md5 straight\n",
                    i + 2
                )
            })
            .collect();
        let lan = format!(
            "name \"duffytest\"\n\
             set_working_mc 0x20\n\
             \x20 startlan 1\n\
             \x20   addr 127.0.0.1 {port}\n\
             \x20   priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n\
             \x20   allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n\
             \x20   allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n\
             \x20 endlan\n\
             \x20 chassis_control \"{} 0x20\"\n{accounts}",
            script.display(),
        );
        std::fs::write(d.join("lan.conf"), lan).unwrap();
        std::fs::write(
            d.join("bmc.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        let log = std::fs::File::create(d.join("ipmi_sim.log")).unwrap();
        let child = Command::new("ipmi_sim")
            .current_dir(d)
            .args(["-c", "lan.conf", "-f", "bmc.emu", "-s", "state", "-n"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ipmi_sim");
        let sim = IpmiSim { dir, port, child };
        sim.wait_ready();
        sim
    }

    /// Until the simulator answers an RMCP presence ping (ASF, IANA 4542).
    fn wait_ready(&self) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let ping = [
            0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x42, 0x00, 0x00,
        ];
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            let _ = sock.send_to(&ping, ("127.0.0.1", self.port));
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 9 && buf[8] == 0x40 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "ipmi_sim did not come up on 127.0.0.1:{}; its log:\n{}",
            self.port,
            std::fs::read_to_string(self.path("ipmi_sim.log")).unwrap_or_default()
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file of the chassis (`power`, `boot`, `calls.log`), trimmed; None if absent.
    pub fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(name))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The chassis script's calls so far ("set power 1", "get power", …).
    pub fn calls(&self) -> Vec<String> {
        self.file("calls.log")
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `ipmitool -I lanplus -C 3 …` as `user` against this simulator; its stdout.
    pub fn ipmitool(&self, (user, password): (&str, &str), args: &[&str]) -> String {
        let port = self.port.to_string();
        let o = Command::new("ipmitool")
            .args(["-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", &port])
            .args(["-U", user, "-P", password])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ipmitool");
        assert!(
            o.status.success(),
            "ipmitool {args:?} failed: {}{}",
            super::stdout(&o),
            super::stderr(&o)
        );
        super::stdout(&o)
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
