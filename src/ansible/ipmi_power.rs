//! `ipmi_power`: chassis power (`on|off|cycle|reset|soft|status`) and boot device
//! (`bootdev: pxe|disk`, `persistent`) of a node's BMC over IPMI 2.0 LAN (RMCP+), with
//! [`crate::ipmi`].
//!
//! Idempotent: the power state (and boot flags) are read first and only what differs is sent
//! ([`PowerControl::plan`]: `on` of a powered node sends nothing); check mode opens a session
//! and queries, and never switches. The boot device is set before the power action, so
//! `bootdev: pxe` + `state: cycle` network-boots the node. The password (or the config's
//! credential, `credential:`) is never shown.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{json, Value};

use super::{Dflt, Failure, Module, Opt, Outcome, Run, Spec};
use crate::ipmi::{Bmc, BootDevice, BootOverride, IpmiError, PowerControl, Privilege, Target};

const OPTIONS: &[Opt] = &[
    Opt::str("host").required(),
    Opt::int("port").default(Dflt::Int(623)),
    Opt::str("user"),
    Opt::str("password").no_log(),
    Opt::str("credential"),
    super::OPT_CONFIG,
    Opt::str("state")
        .choices(&["on", "off", "cycle", "reset", "soft", "status"])
        .default(Dflt::Str("status")),
    Opt::str("bootdev").choices(&["pxe", "disk"]),
    Opt::bool("persistent").default(Dflt::Bool(false)),
    Opt::bool("efiboot").default(Dflt::Bool(false)),
    Opt::int("timeout").default(Dflt::Int(5)),
    Opt::int("retries").default(Dflt::Int(3)),
    Opt::int("wait").default(Dflt::Int(0)),
    Opt::str("privilege")
        .choices(&["operator", "administrator"])
        .default(Dflt::Str("administrator")),
];

pub const MODULE: Module = Module {
    name: "ipmi_power",
    spec: Spec {
        options: OPTIONS,
        mutually_exclusive: &[&["credential", "user"], &["credential", "password"]],
        required_together: &[],
        required_one_of: &[&["user", "credential"]],
        required_if: &[],
    },
    run,
};

fn boot_json(b: &BootOverride) -> Value {
    json!({
        "device": b.device.to_string(),
        "persistent": b.persistent,
        "efiboot": b.efi,
        "valid": b.valid,
    })
}

fn ipmi_failure(e: IpmiError) -> anyhow::Error {
    Failure::new(e.to_string())
        .with("error_kind", e.kind())
        .into()
}

/// The BMC target from the options (and the config's `ipmi.credentials.<credential>`).
fn target(run: &Run) -> anyhow::Result<Target> {
    let p = &run.params;
    let host = p.str("host").unwrap_or_default();
    let port = p.int("port").unwrap_or(623);
    let port = u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| anyhow!("port: expected 1 to 65535, got {port}"))?;
    let (user, password) = match p.str("credential") {
        Some(name) => {
            let cfg = super::load_config(run)?;
            let c = cfg.ipmi.credentials.get(name).ok_or_else(|| {
                anyhow!(
                    "credential {name:?} is not defined under ipmi.credentials in the duffy config ({} defined)",
                    cfg.ipmi.credentials.len()
                )
            })?;
            run.secret(c.password.clone());
            (c.user.clone(), c.password.clone())
        }
        None => (
            p.str("user").unwrap_or_default().to_string(),
            p.str("password").unwrap_or_default().to_string(),
        ),
    };
    let timeout = p.int("timeout").unwrap_or(5);
    if !(1..=3600).contains(&timeout) {
        bail!("timeout: expected 1 to 3600 seconds, got {timeout}");
    }
    let retries = p.int("retries").unwrap_or(3);
    if !(0..=100).contains(&retries) {
        bail!("retries: expected 0 to 100, got {retries}");
    }
    let mut t = Target::new(host, user, password);
    t.port = port;
    t.timeout = Duration::from_secs(timeout as u64);
    t.retries = retries as u32;
    t.privilege = p
        .str("privilege")
        .unwrap_or("administrator")
        .parse::<Privilege>()
        .map_err(|e| anyhow!("privilege: {e}"))?;
    Ok(t)
}

fn run(run: &mut Run) -> anyhow::Result<Outcome> {
    let p = &run.params;
    let state = p.str("state").unwrap_or("status").to_string();
    let action = match state.as_str() {
        "status" => None,
        s => Some(
            s.parse::<PowerControl>()
                .map_err(|e| anyhow!("state: {e}"))?,
        ),
    };
    let bootdev = p
        .str("bootdev")
        .map(|s| s.parse::<BootDevice>().map_err(|e| anyhow!("bootdev: {e}")))
        .transpose()?;
    let persistent = p.bool("persistent").unwrap_or(false);
    let efi = p.bool("efiboot").unwrap_or(false);
    let wait = p.int("wait").unwrap_or(0);
    if !(0..=3600).contains(&wait) {
        bail!("wait: expected 0 to 3600 seconds, got {wait}");
    }
    let t = target(run)?;
    let addr = t.addr();

    let mut bmc = Bmc::connect(&t).map_err(ipmi_failure)?;
    let power_before = bmc.power_status().map_err(ipmi_failure)?;
    let boot_before = match bootdev {
        Some(_) => Some(bmc.get_bootdev().map_err(ipmi_failure)?),
        None => None,
    };
    // boot device first: a following power on/cycle/reset boots from it
    let boot_change = match (bootdev, &boot_before) {
        (Some(d), Some(b)) => !(b.matches(d, persistent) && b.efi == efi),
        _ => false,
    };
    let sent = action.and_then(|a| a.plan(power_before));
    let changed = boot_change || sent.is_some();

    let mut before = json!({"power": power_before.as_str()});
    let mut after = before.clone();
    if let (Some(d), Some(b)) = (bootdev, &boot_before) {
        before["bootdev"] = boot_json(b);
        after["bootdev"] = json!({"device": d.to_string(), "persistent": persistent, "efiboot": efi, "valid": true});
    }
    if let Some(a) = action {
        if sent.is_some() {
            after["power"] = json!(a.target_state().as_str());
        }
    }

    let mut what = Vec::new();
    if boot_change {
        what.push(format!(
            "boot device {}{}",
            bootdev.map(|d| d.to_string()).unwrap_or_default(),
            if persistent { " (persistent)" } else { "" }
        ));
    }
    if let Some(c) = sent {
        what.push(format!("power {c}"));
    }

    if run.check_mode || !changed {
        let msg = if !changed {
            match action {
                None => format!("BMC {addr}: power is {power_before}"),
                Some(a) => format!(
                    "BMC {addr}: power is {power_before}, nothing to do for {a}{}",
                    if bootdev.is_some() {
                        ", boot device already set"
                    } else {
                        ""
                    }
                ),
            }
        } else {
            format!("BMC {addr}: would set {}", what.join(", then "))
        };
        let mut o = Outcome::new(changed, msg)
            .with("power", power_before.as_str())
            .with("power_before", power_before.as_str())
            .with("sent", sent.map(|c| c.as_str()));
        if let Some(b) = &boot_before {
            o = o.with("bootdev", boot_json(b));
        }
        if changed {
            o = o.diff(format!("BMC {addr}"), before, after);
        }
        let _ = bmc.close();
        return Ok(o);
    }

    if boot_change {
        if let Some(d) = bootdev {
            bmc.set_boot_flags(d, persistent, efi)
                .map_err(ipmi_failure)?;
        }
    }
    if let Some(c) = sent {
        bmc.power(c).map_err(ipmi_failure)?;
    }
    let mut warnings = Vec::new();
    if let (Some(a), Some(_), true) = (action, sent, wait > 0) {
        let reached = bmc
            .wait_for_power(a.target_state(), Duration::from_secs(wait as u64))
            .map_err(ipmi_failure)?;
        if !reached {
            return Err(Failure::new(format!(
                "BMC {addr}: sent power {}, but the chassis is not {} after {wait} s",
                sent.map(|c| c.as_str()).unwrap_or_default(),
                a.target_state()
            ))
            .into());
        }
    }
    let power_now = bmc.power_status().map_err(ipmi_failure)?;
    if let (Some(a), Some(c)) = (action, sent) {
        if power_now != a.target_state() && matches!(c, PowerControl::On | PowerControl::Off) {
            warnings.push(format!(
                "power {c} was accepted but the chassis still reports {power_now} (set wait: N to wait for it)"
            ));
        }
    }
    let boot_now = match bootdev {
        Some(_) => Some(bmc.get_bootdev().map_err(ipmi_failure)?),
        None => None,
    };
    let _ = bmc.close();
    for w in warnings {
        run.warn(w);
    }
    let mut o = Outcome::new(true, format!("BMC {addr}: set {}", what.join(", then ")))
        .with("power", power_now.as_str())
        .with("power_before", power_before.as_str())
        .with("sent", sent.map(|c| c.as_str()));
    if let Some(b) = &boot_now {
        o = o.with("bootdev", boot_json(b));
    }
    Ok(o.diff(format!("BMC {addr}"), before, after))
}
