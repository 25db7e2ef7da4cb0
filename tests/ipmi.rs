//! `duffy::ipmi` against a real BMC simulator: OpenIPMI's `ipmi_sim` on 127.0.0.1, each test
//! with its own instance (temp dir, free UDP port, killed on drop), cross-checked with
//! `ipmitool -I lanplus -C 3` and with the state files of the simulator's chassis script.
//!
//! The simulator is installed by `.ci/ipmi-sim.sh` (apt, idempotent), which the tests run
//! themselves: they never skip; without root and without the packages they fail saying so.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;

use common::ipmi_sim::IpmiSim;
use duffy::ipmi::{Bmc, BootDevice, IpmiError, PowerControl, PowerState, Privilege, Target};

const ADMIN: (&str, &str) = ("admin", "s3cret-Adm1n");
const OPERATOR: (&str, &str) = ("oper", "op-Secret-9");
const VIEWER: (&str, &str) = ("viewer", "v1ew-Secret");

/// The shared simulator (tests/common/ipmi_sim.rs) with this file's three accounts.
struct Sim(IpmiSim);

impl std::ops::Deref for Sim {
    type Target = IpmiSim;
    fn deref(&self) -> &IpmiSim {
        &self.0
    }
}

impl std::ops::DerefMut for Sim {
    fn deref_mut(&mut self) -> &mut IpmiSim {
        &mut self.0
    }
}

impl Sim {
    fn start() -> Sim {
        Sim(IpmiSim::start(&[
            (ADMIN.0, ADMIN.1, "admin"),
            (OPERATOR.0, OPERATOR.1, "operator"),
            (VIEWER.0, VIEWER.1, "user"),
        ]))
    }

    fn target(&self, (user, password): (&str, &str)) -> Target {
        let mut t = Target::new("127.0.0.1", user, password);
        t.port = self.port;
        t.timeout = Duration::from_secs(1);
        t.retries = 2;
        t
    }

    fn admin(&self) -> Bmc {
        Bmc::connect(&self.target(ADMIN)).expect("connect as admin")
    }

    /// `ipmitool -I lanplus -C 3 …` as admin against this simulator; its stdout.
    fn ipmitool(&self, args: &[&str]) -> String {
        self.0.ipmitool(ADMIN, args)
    }

    fn ipmitool_power(&self) -> PowerState {
        let s = self.ipmitool(&["chassis", "power", "status"]);
        match s.trim() {
            "Chassis Power is on" => PowerState::On,
            "Chassis Power is off" => PowerState::Off,
            other => panic!("ipmitool says {other:?}"),
        }
    }

    /// The chassis script's power file ("0"/"1", "0" when never set).
    fn power_file(&self) -> String {
        self.file("power").unwrap_or_else(|| "0".into())
    }

    fn boot_file(&self) -> Option<String> {
        self.file("boot")
    }

    /// Power the chassis by writing the state file directly (not through IPMI).
    fn set_power_file(&self, on: bool) {
        std::fs::write(self.path("power"), format!("{}\n", u8::from(on))).unwrap();
    }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn power_status_on_off_soft_reset_cycle_agree_with_ipmitool() {
    let sim = Sim::start();
    let mut bmc = sim.admin();
    assert!(bmc.session_id().is_some());

    // status: off at start, as ipmitool sees it
    assert_eq!(bmc.power_status().unwrap(), PowerState::Off);
    assert_eq!(sim.ipmitool_power(), PowerState::Off);
    let st = bmc.chassis_status().unwrap();
    assert!(!st.power_fault && !st.power_control_fault);

    // on
    bmc.power(PowerControl::On).unwrap();
    assert_eq!(sim.power_file(), "1");
    assert_eq!(sim.ipmitool_power(), PowerState::On);
    assert_eq!(bmc.power_status().unwrap(), PowerState::On);

    // off
    bmc.power(PowerControl::Off).unwrap();
    assert_eq!(sim.power_file(), "0");
    assert_eq!(sim.ipmitool_power(), PowerState::Off);
    assert_eq!(bmc.power_status().unwrap(), PowerState::Off);

    // what ipmitool switches, we read
    sim.ipmitool(&["chassis", "power", "on"]);
    assert_eq!(bmc.power_status().unwrap(), PowerState::On);

    // reset: the chassis gets "set reset 1", power stays on
    bmc.power(PowerControl::Reset).unwrap();
    assert!(
        sim.calls().iter().any(|c| c == "set reset 1"),
        "{:?}",
        sim.calls()
    );
    assert_eq!(sim.ipmitool_power(), PowerState::On);

    // soft: "set shutdown 1", which our chassis script turns into power off
    bmc.power(PowerControl::Soft).unwrap();
    assert!(
        sim.calls().iter().any(|c| c == "set shutdown 1"),
        "{:?}",
        sim.calls()
    );
    assert_eq!(sim.power_file(), "0");
    assert_eq!(sim.ipmitool_power(), PowerState::Off);

    // cycle: ipmi_sim powers off, then on again about a second later
    sim.set_power_file(true);
    let before = sim.calls().len();
    bmc.power(PowerControl::Cycle).unwrap();
    assert!(bmc
        .wait_for_power(PowerState::On, Duration::from_secs(10))
        .unwrap());
    wait_until("power file 1 after cycle", Duration::from_secs(5), || {
        sim.power_file() == "1"
    });
    let sets: Vec<String> = sim.calls()[before..]
        .iter()
        .filter(|c| c.starts_with("set "))
        .cloned()
        .collect();
    assert_eq!(sets, ["set power 0", "set power 1"]);
    assert_eq!(sim.ipmitool_power(), PowerState::On);

    bmc.close().unwrap();
}

#[test]
fn apply_power_is_idempotent_and_check_mode_only_queries() {
    let sim = Sim::start();
    let mut bmc = sim.admin();

    // check mode: reports the change, switches nothing
    let c = bmc.apply_power(PowerControl::On, true).unwrap();
    assert_eq!(c.before, PowerState::Off);
    assert_eq!(c.sent, Some(PowerControl::On));
    assert!(!sim.calls().iter().any(|c| c.starts_with("set ")));
    assert_eq!(sim.ipmitool_power(), PowerState::Off);

    let c = bmc.apply_power(PowerControl::On, false).unwrap();
    assert!(c.changed());
    assert_eq!(sim.ipmitool_power(), PowerState::On);
    // second run: nothing to do
    let sets = sim.calls().iter().filter(|c| c.starts_with("set ")).count();
    let c = bmc.apply_power(PowerControl::On, false).unwrap();
    assert!(!c.changed());
    assert_eq!(c.before, PowerState::On);
    assert_eq!(
        sim.calls().iter().filter(|c| c.starts_with("set ")).count(),
        sets
    );

    let c = bmc.apply_power(PowerControl::Off, false).unwrap();
    assert!(c.changed());
    assert_eq!(sim.ipmitool_power(), PowerState::Off);
    assert!(!bmc.apply_power(PowerControl::Off, false).unwrap().changed());
    assert!(!bmc
        .apply_power(PowerControl::Soft, false)
        .unwrap()
        .changed());
    // cycle of an off node powers it on
    let c = bmc.apply_power(PowerControl::Cycle, false).unwrap();
    assert_eq!(c.sent, Some(PowerControl::On));
    assert_eq!(sim.ipmitool_power(), PowerState::On);
}

#[test]
fn bootdev_pxe_and_disk_agree_with_ipmitool_and_the_chassis() {
    let sim = Sim::start();
    let mut bmc = sim.admin();

    // pxe, next boot only
    bmc.set_bootdev(BootDevice::Pxe, false).unwrap();
    assert_eq!(sim.boot_file().as_deref(), Some("pxe"));
    let p = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(p.contains("Boot Device Selector : Force PXE"), "{p}");
    assert_eq!(bmc.get_bootdev().unwrap().device, BootDevice::Pxe);

    // disk, persistent
    bmc.set_bootdev(BootDevice::Disk, true).unwrap();
    assert_eq!(sim.boot_file().as_deref(), Some("default"));
    let p = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(p.contains("Force Boot from default Hard-Drive"), "{p}");
    let o = bmc.get_bootdev().unwrap();
    assert_eq!(o.device, BootDevice::Disk);
    // ipmi_sim keeps only the device: it never reports the valid/persistent bits
    assert!(!o.valid && !o.persistent, "{o:?}");

    // pxe, persistent
    bmc.set_bootdev(BootDevice::Pxe, true).unwrap();
    assert_eq!(sim.boot_file().as_deref(), Some("pxe"));
    let p = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(p.contains("Force PXE"), "{p}");

    // what ipmitool sets, we read
    sim.ipmitool(&["chassis", "bootdev", "disk"]);
    assert_eq!(bmc.get_bootdev().unwrap().device, BootDevice::Disk);
    sim.ipmitool(&["chassis", "bootdev", "none"]);
    assert_eq!(bmc.get_bootdev().unwrap().device, BootDevice::None);

    // the chassis saw exactly our three boot settings plus ipmitool's two
    let boots: Vec<String> = sim
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("set boot"))
        .collect();
    assert_eq!(
        boots,
        [
            "set boot pxe",
            "set boot default",
            "set boot pxe",
            "set boot default",
            "set boot none"
        ]
    );
}

#[test]
fn wrong_password_and_unknown_user_fail_clearly_without_the_password() {
    let sim = Sim::start();
    let wrong = "Wr0ng-Passw0rd!";
    let started = Instant::now();
    let e = Bmc::connect(&sim.target((ADMIN.0, wrong))).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, IpmiError::AuthFailed { .. }), "{e:?}");
    let msg = e.to_string();
    let addr = format!("127.0.0.1:{}", sim.port);
    assert!(
        msg.starts_with(&format!(
            "authentication failed for user \"admin\" at {addr}"
        )),
        "{msg}"
    );
    for shown in [msg.clone(), format!("{e:?}"), format!("{e:#}")] {
        assert!(
            !shown.contains(wrong) && !shown.contains(ADMIN.1),
            "{shown}"
        );
    }

    let e = Bmc::connect(&sim.target(("nobody", ADMIN.1))).unwrap_err();
    assert!(matches!(e, IpmiError::AuthFailed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("\"nobody\"") && msg.contains(&addr), "{msg}");
    assert!(!msg.contains(ADMIN.1) && !format!("{e:?}").contains(ADMIN.1));

    // and the right password still works (no lock-out)
    let mut bmc = sim.admin();
    assert_eq!(bmc.power_status().unwrap(), PowerState::Off);
}

#[test]
fn silent_bmc_times_out_within_the_configured_time() {
    // a UDP port that receives but never answers
    let hole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut t = Target::new("127.0.0.1", ADMIN.0, ADMIN.1);
    t.port = hole.local_addr().unwrap().port();
    t.timeout = Duration::from_millis(300);
    t.retries = 2;
    let started = Instant::now();
    let e = Bmc::connect(&t).unwrap_err();
    let took = started.elapsed();
    assert!(
        // 3 tries × 300 ms, plus slack for a loaded 2-core machine
        took >= Duration::from_millis(850) && took < Duration::from_millis(2500),
        "took {took:?}: {e:?}"
    );
    match &e {
        IpmiError::Timeout { tries, timeout, .. } => {
            assert_eq!((*tries, *timeout), (3, Duration::from_millis(300)));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_unreachable());
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "no answer from BMC at 127.0.0.1:{} after 3 tries of 300ms each while opening a session",
            t.port
        )),
        "{msg}"
    );
    assert!(!msg.contains(ADMIN.1));
    // every try was a fresh first request (retransmission), all received by the "BMC": an
    // IPMI message (RMCP class 0x07, no presence ping first), Get Channel Authentication
    // Capabilities (netfn App 0x06 << 2 = 0x18, cmd 0x38)
    hole.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let mut firsts = 0;
    while let Ok(n) = hole.recv(&mut buf) {
        assert!(n >= 20 && buf[3] == 0x07, "{:02x?}", &buf[..n]);
        assert_eq!((buf[15], buf[19]), (0x18, 0x38), "{:02x?}", &buf[..n]);
        firsts += 1;
    }
    assert_eq!(firsts, 3);
}

#[test]
fn closed_port_is_reported_unreachable_within_the_configured_time() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut t = Target::new("127.0.0.1", ADMIN.0, ADMIN.1);
    t.port = port;
    t.timeout = Duration::from_millis(200);
    t.retries = 1;
    let started = Instant::now();
    let e = Bmc::connect(&t).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(
        matches!(e, IpmiError::Unreachable { tries: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("connection refused"), "{e}");
}

#[test]
fn a_bmc_that_dies_mid_session_gives_a_clear_error() {
    let mut sim = Sim::start();
    let mut t = sim.target(ADMIN);
    t.timeout = Duration::from_millis(300);
    t.retries = 1;
    let mut bmc = Bmc::connect(&t).unwrap();
    assert_eq!(bmc.power_status().unwrap(), PowerState::Off);
    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    let started = Instant::now();
    let e = bmc.power(PowerControl::On).unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    assert!(e.to_string().contains("Chassis Control (on)"), "{e}");
    drop(bmc); // tries Close Session once, must not hang or panic
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sessions_are_closed_so_80_runs_do_not_exhaust_the_bmc() {
    let sim = Sim::start();
    let started = Instant::now();
    for i in 0..80 {
        let mut bmc =
            Bmc::connect(&sim.target(ADMIN)).unwrap_or_else(|e| panic!("connect #{i} failed: {e}"));
        assert_eq!(bmc.power_status().unwrap(), PowerState::Off);
        if i % 2 == 0 {
            bmc.close().unwrap();
        } // else: closed on drop
    }
    eprintln!("80 sessions in {:?}", started.elapsed());
    // ipmitool still gets a session too
    assert_eq!(sim.ipmitool_power(), PowerState::Off);
}

#[test]
fn leaked_sessions_do_exhaust_the_bmc_and_say_so() {
    // the counter-proof of the test above: without Close Session, ipmi_sim runs out of slots
    let sim = Sim::start();
    let mut leaked = 0;
    let err = loop {
        match Bmc::connect(&sim.target(ADMIN)) {
            Ok(bmc) => {
                std::mem::forget(bmc);
                leaked += 1;
                assert!(leaked < 200, "ipmi_sim never ran out of sessions");
            }
            Err(e) => break e,
        }
    };
    assert!(leaked >= 4, "only {leaked} sessions");
    assert!(matches!(err, IpmiError::NoSessionSlot { .. }), "{err:?}");
    assert!(err.to_string().contains("no free session slot"), "{err}");
}

#[test]
fn privilege_levels_are_enforced_and_reported() {
    let sim = Sim::start();

    // an OPERATOR account may switch power when it asks for OPERATOR
    let mut t = sim.target(OPERATOR);
    t.privilege = Privilege::Operator;
    let mut bmc = Bmc::connect(&t).unwrap();
    bmc.power(PowerControl::On).unwrap();
    assert_eq!(sim.ipmitool_power(), PowerState::On);
    drop(bmc);

    // (ipmi_sim does not cap a session at the user's own limit: with the name-only lookup that
    // duffy and ipmitool use, it grants even a USER account an ADMINISTRATOR session, so the
    // "account below the requested level" case cannot be shown here; real BMCs answer the Set
    // Session Privilege Level with 0x81, which gives `InsufficientPrivilege` as well.)

    // a session at USER level may read the status but not switch power: 0xD4
    for (account, user) in [(VIEWER, "viewer"), (ADMIN, "admin")] {
        let mut t = sim.target(account);
        t.privilege = Privilege::User;
        let mut bmc = Bmc::connect(&t).unwrap();
        assert_eq!(bmc.power_status().unwrap(), PowerState::On);
        let e = bmc.power(PowerControl::Off).unwrap_err();
        assert!(
            matches!(e, IpmiError::InsufficientPrivilege { .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "insufficient privilege: user \"{user}\" at 127.0.0.1:"
            )) && msg.contains("Chassis Control (off)"),
            "{msg}"
        );
        assert!(!msg.contains(account.1), "{msg}");
        let e = bmc.set_bootdev(BootDevice::Pxe, false).unwrap_err();
        assert!(
            matches!(e, IpmiError::InsufficientPrivilege { .. }),
            "{e:?}"
        );
        assert_eq!(sim.ipmitool_power(), PowerState::On);
        assert_eq!(sim.boot_file(), None);
    }
}

/// Two's-complement checksum of IPMB messages.
fn ipmb_checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// A minimal fake BMC that answers the presence ping and Get Channel Authentication
/// Capabilities like a real IPMI 2.0 BMC, then refuses the RMCP+ Open Session Request with
/// status 0x11 "no cipher suite match" — a BMC on which cipher suite 3 is disabled (ipmi_sim
/// cannot be configured that way). Returns its port.
fn fake_bmc_without_cipher_suite_3() -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let p = &buf[..n];
            let reply: Vec<u8> = if n >= 10 && p[3] == 0x06 {
                // ASF presence ping → pong: IPMI supported (entities bit 7)
                let mut r = vec![0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x40, p[9]];
                r.extend([0x00, 0x10, 0x00, 0x00, 0x11, 0xBE, 0, 0, 0, 0, 0x81, 0x00]);
                r.extend([0; 6]);
                r
            } else if n >= 20 && p[4] == 0x00 && p[19] == 0x38 {
                // IPMI 1.5 sessionless Get Channel Authentication Capabilities → channel 1,
                // MD5 + IPMI v2.0 extended data, IPMI 2.0 connections supported
                let rq_seq = p[18];
                let head = [0x81, 0x07 << 2];
                let body = [0x20, rq_seq, 0x38, 0x00, 0x01, 0x84, 0x00, 0x02, 0, 0, 0, 0];
                let mut msg = head.to_vec();
                msg.push(ipmb_checksum(&head));
                msg.extend(body);
                msg.push(ipmb_checksum(&body));
                let mut r = vec![0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
                r.push(msg.len() as u8);
                r.extend(msg);
                r
            } else if n >= 24 && p[4] == 0x06 && p[5] & 0x3F == 0x10 {
                // RMCP+ Open Session Request → status 0x11, no cipher suite match
                let payload = [p[16], 0x11, 0x00, 0x00, p[20], p[21], p[22], p[23]];
                let mut r = vec![0x06, 0x00, 0xFF, 0x07, 0x06, 0x11, 0, 0, 0, 0, 0, 0, 0, 0];
                r.extend((payload.len() as u16).to_le_bytes());
                r.extend(payload);
                r
            } else {
                continue;
            };
            let _ = sock.send_to(&reply, peer);
        }
    });
    port
}

#[test]
fn a_bmc_without_cipher_suite_3_is_reported_as_such() {
    let mut t = Target::new("127.0.0.1", ADMIN.0, ADMIN.1);
    t.port = fake_bmc_without_cipher_suite_3();
    t.timeout = Duration::from_secs(2);
    let started = Instant::now();
    let e = Bmc::connect(&t).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{e:?}");
    assert!(
        matches!(e, IpmiError::UnsupportedCipherSuite { .. }),
        "{e:?}"
    );
    assert_eq!(e.kind(), "unsupported_cipher_suite");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "BMC at 127.0.0.1:{} does not accept cipher suite 3",
            t.port
        )) && msg.contains("NoMatchingCipherSuite"),
        "{msg}"
    );
    assert!(!msg.contains(ADMIN.1));
}
