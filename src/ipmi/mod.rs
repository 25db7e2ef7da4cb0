//! IPMI 2.0 over LAN (RMCP+) to a node's BMC: chassis power and boot device, for the
//! `ipmi_power` Ansible module (and later the scheduler's reinstall jobs).
//!
//! ```no_run
//! use duffy::ipmi::{Bmc, BootDevice, PowerControl, PowerState, Target};
//! # fn main() -> Result<(), duffy::ipmi::IpmiError> {
//! let mut bmc = Bmc::connect(&Target::new("bmc-n1.example.org", "admin", "secret"))?;
//! if bmc.power_status()? == PowerState::Off {
//!     bmc.set_bootdev(BootDevice::Pxe, false)?;
//!     bmc.power(PowerControl::On)?;
//! }
//! // the session is closed when `bmc` is dropped (or explicitly with `bmc.close()`)
//! # Ok(()) }
//! ```
//!
//! Blocking (std UDP sockets with a read timeout), like ipmi-rs: fine for a short-lived module
//! process; from async code wrap calls in `tokio::task::spawn_blocking`.
//!
//! # Built on ipmi-rs, and what duffy added
//! The design names the `ipmi-rs` crate. Its 0.6.0 release does the RMCP+ handshake (RAKP with
//! cipher suite 3: HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128 — the only suite it speaks) but lacks
//! what power control needs, so duffy:
//! - **adds the commands** in [`commands`], through ipmi-rs's public `IpmiCommand` trait:
//!   Get Chassis Status, Chassis Control, Set/Get System Boot Options, Set Session Privilege
//!   Level and Close Session;
//! - **raises the session privilege** before the first command that needs it (an RMCP+ session
//!   starts at USER level, so Chassis Control would answer 0xD4 "insufficient privilege"; a
//!   status query stays at USER and saves the exchange);
//! - **retransmits** on a UDP timeout, in [`Bmc`] (a whole new session when activation times
//!   out; the same command, with a new sequence number, inside a session), and maps ipmi-rs's
//!   nested protocol errors onto [`IpmiError`] — wrong password, unreachable BMC, unsupported
//!   cipher suite, insufficient privilege, no free session slot — never echoing the password;
//! - **vendors a patched ipmi-rs 0.6.0** (`vendor/ipmi-rs`, list in its `PATCHES.md`), because
//!   some gaps cannot be closed from outside: the session ID needed by Close Session is private
//!   (so every run leaked a BMC session: ipmi_sim refuses new ones after 63, real BMCs often
//!   after 4–16), a late answer to a retransmitted request was taken for the next command's
//!   answer, a send error or a BMC picking other algorithms panicked (`unwrap`, `todo!`), it
//!   always asked for ADMINISTRATOR (refused to OPERATOR accounts), silently fell back to IPMI
//!   1.5 (whose "straight" auth sends the password in clear), and bound `[::]:0` (fails where
//!   IPv6 is disabled).
//!
//! Not covered: cipher suites other than 3 (e.g. 17, SHA-256), IPMI 1.5, Kg (BMC key)
//! authentication. No RMCP presence ping is sent (like ipmitool), so BMCs that never answer one
//! (pyghmi's fake BMC, virtualbmc) are not refused for it.

pub mod commands;
mod error;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipmi_rs::connection::{
    IpmiCommand, IpmiConnection, LogicalUnit, Message, Request, RequestTargetAddress,
};
use ipmi_rs::rmcp::{PrivilegeLevel, Rmcp};

pub use error::{completion_code_meaning, IpmiError, CIPHER_SUITE};

use commands::{
    ChassisControl, CloseSession, GetBootFlags, GetChassisStatus, SetSessionPrivilegeLevel,
    SetSystemBootOptions,
};
use error::{Ctx, Failure};

/// Where a BMC is and how to talk to it.
#[derive(Clone)]
pub struct Target {
    /// Host name, IPv4 or IPv6 address (brackets optional) of the BMC.
    pub host: String,
    /// UDP port, normally 623.
    pub port: u16,
    pub user: String,
    /// Never printed: `Debug` redacts it and no error message contains it.
    pub password: String,
    /// How long to wait for each answer before retransmitting.
    pub timeout: Duration,
    /// How many times to retransmit after a timeout (so `retries + 1` tries in all).
    pub retries: u32,
    /// The session privilege to ask for; chassis control needs at least OPERATOR.
    pub privilege: Privilege,
}

impl Target {
    /// The standard RMCP port.
    pub const DEFAULT_PORT: u16 = 623;

    /// A target with the defaults of duffy's `ipmi` config section: port 623, 5 s timeout,
    /// 3 retries, ADMINISTRATOR privilege (as `ipmitool -I lanplus` asks for).
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port: Self::DEFAULT_PORT,
            user: user.into(),
            password: password.into(),
            timeout: Duration::from_secs(5),
            retries: 3,
            privilege: Privilege::Administrator,
        }
    }

    /// `host:port` (`[v6]:port`), as errors name the BMC.
    pub fn addr(&self) -> String {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        if host.contains(':') {
            format!("[{host}]:{}", self.port)
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn validate(&self) -> Result<(), IpmiError> {
        let bad = |m: String| Err(IpmiError::InvalidTarget(m));
        if self.host.trim().is_empty() {
            return bad("empty BMC host".into());
        }
        if self.port == 0 {
            return bad("BMC port 0".into());
        }
        // RAKP sends at most 16 bytes of user name; ipmi-rs silently truncates/empties longer
        // or non-ASCII names, which would end in a confusing authentication failure.
        if self.user.len() > 16 || !self.user.bytes().all(|b| b.is_ascii() && b != 0) {
            return bad(format!(
                "user name {:?}: IPMI user names are at most 16 ASCII characters",
                self.user
            ));
        }
        // IPMI 2.0 passwords are at most 20 bytes (never show it, only its length).
        if self.password.len() > 20 {
            return bad(format!(
                "the password is {} bytes long; IPMI 2.0 passwords are at most 20 bytes",
                self.password.len()
            ));
        }
        if self.timeout < Duration::from_millis(1) {
            return bad("timeout must be at least 1ms".into());
        }
        Ok(())
    }

    fn resolve(&self) -> Result<SocketAddr, IpmiError> {
        let host = self
            .host
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let err = |source| IpmiError::Resolve {
            addr: self.addr(),
            source,
        };
        (host, self.port)
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("no address found")))
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("privilege", &self.privilege)
            .finish()
    }
}

/// Session privilege levels duffy may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    User,
    Operator,
    Administrator,
}

impl Privilege {
    /// The IPMI code (2, 3, 4).
    pub fn code(self) -> u8 {
        match self {
            Self::User => 2,
            Self::Operator => 3,
            Self::Administrator => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Operator => "operator",
            Self::Administrator => "administrator",
        }
    }
}

impl From<Privilege> for PrivilegeLevel {
    fn from(p: Privilege) -> Self {
        match p {
            Privilege::User => PrivilegeLevel::User,
            Privilege::Operator => PrivilegeLevel::Operator,
            Privilege::Administrator => PrivilegeLevel::Administrator,
        }
    }
}

impl FromStr for Privilege {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "user" => Ok(Self::User),
            "operator" => Ok(Self::Operator),
            "administrator" | "admin" => Ok(Self::Administrator),
            _ => Err(format!(
                "unknown privilege {s:?} (expected user, operator or administrator)"
            )),
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Chassis power as the BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    Off,
    On,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Chassis Control actions (ipmitool's `chassis power` words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerControl {
    /// Hard power down.
    Off,
    /// Power up.
    On,
    /// Power down, then up again (the BMC waits a moment in between).
    Cycle,
    /// Hard reset (power stays on).
    Reset,
    /// Soft shutdown: ACPI power button / overtemperature signal to the OS.
    Soft,
}

impl PowerControl {
    /// The Chassis Control code (spec table 28-4).
    pub fn code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::On => 1,
            Self::Cycle => 2,
            Self::Reset => 3,
            Self::Soft => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Cycle => "cycle",
            Self::Reset => "reset",
            Self::Soft => "soft",
        }
    }

    /// Idempotence: what to send to a chassis now in `current` so that this action's intent
    /// holds; `None` = nothing to do (`changed: false`).
    /// - `on` of an on node, `off` and `soft` of an off node: nothing;
    /// - `cycle` and `reset` of an on node: themselves (they always change something);
    /// - `cycle` and `reset` of an off node: `on` (many BMCs refuse to cycle or reset an off
    ///   chassis with 0xD5; the intent, "boot it afresh", is met by powering it on).
    pub fn plan(self, current: PowerState) -> Option<PowerControl> {
        use PowerControl::*;
        match (self, current) {
            (On, PowerState::On) | (Off | Soft, PowerState::Off) => None,
            (Cycle | Reset, PowerState::Off) => Some(On),
            (action, _) => Some(action),
        }
    }

    /// The power state this action leads to (once done; `soft` depends on the OS obeying).
    pub fn target_state(self) -> PowerState {
        match self {
            Self::Off | Self::Soft => PowerState::Off,
            Self::On | Self::Cycle | Self::Reset => PowerState::On,
        }
    }
}

impl FromStr for PowerControl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "cycle" => Ok(Self::Cycle),
            "reset" => Ok(Self::Reset),
            "soft" => Ok(Self::Soft),
            _ => Err(format!(
                "unknown power action {s:?} (expected on, off, cycle, reset or soft)"
            )),
        }
    }
}

impl fmt::Display for PowerControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Boot device selector of the boot flags (spec table 28-14, byte 2 bits 5:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// No override: the BIOS boot order applies.
    None,
    Pxe,
    /// The default hard disk.
    Disk,
    /// Default hard disk, safe mode.
    Safe,
    /// Diagnostic partition.
    Diag,
    Cdrom,
    /// Into BIOS setup.
    Bios,
    /// Floppy / primary removable media.
    Floppy,
    /// Any other (remote media, reserved) selector.
    Other(u8),
}

impl BootDevice {
    pub fn selector(self) -> u8 {
        match self {
            Self::None => 0x0,
            Self::Pxe => 0x1,
            Self::Disk => 0x2,
            Self::Safe => 0x3,
            Self::Diag => 0x4,
            Self::Cdrom => 0x5,
            Self::Bios => 0x6,
            Self::Floppy => 0xF,
            Self::Other(v) => v & 0x0F,
        }
    }

    pub fn from_selector(v: u8) -> Self {
        match v & 0x0F {
            0x0 => Self::None,
            0x1 => Self::Pxe,
            0x2 => Self::Disk,
            0x3 => Self::Safe,
            0x4 => Self::Diag,
            0x5 => Self::Cdrom,
            0x6 => Self::Bios,
            0xF => Self::Floppy,
            v => Self::Other(v),
        }
    }
}

impl FromStr for BootDevice {
    type Err = String;
    /// ipmitool's `chassis bootdev` words.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "pxe" => Ok(Self::Pxe),
            "disk" => Ok(Self::Disk),
            "safe" => Ok(Self::Safe),
            "diag" => Ok(Self::Diag),
            "cdrom" => Ok(Self::Cdrom),
            "bios" => Ok(Self::Bios),
            "floppy" => Ok(Self::Floppy),
            _ => Err(format!(
                "unknown boot device {s:?} (expected pxe, disk, none, safe, diag, cdrom, bios or floppy)"
            )),
        }
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Pxe => f.write_str("pxe"),
            Self::Disk => f.write_str("disk"),
            Self::Safe => f.write_str("safe"),
            Self::Diag => f.write_str("diag"),
            Self::Cdrom => f.write_str("cdrom"),
            Self::Bios => f.write_str("bios"),
            Self::Floppy => f.write_str("floppy"),
            Self::Other(v) => write!(f, "selector-{v:#x}"),
        }
    }
}

/// The boot flags as read back (Get System Boot Options, parameter 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOverride {
    pub device: BootDevice,
    /// Bit "boot flags valid": the override is in force. BMCs clear it after the next boot
    /// (unless persistent) and 60 s after setting it when no restart follows.
    pub valid: bool,
    /// Applies to all future boots, not only the next one.
    pub persistent: bool,
    /// EFI boot rather than legacy BIOS.
    pub efi: bool,
    /// The parameter is marked invalid/locked.
    pub locked: bool,
}

impl BootOverride {
    /// Whether this override is in force with `device` and `persistent` (strict: the valid
    /// bit must be set). NB: OpenIPMI's `ipmi_sim` never reports the valid or persistent bits
    /// (it keeps only the device), so against it this is always false.
    pub fn matches(&self, device: BootDevice, persistent: bool) -> bool {
        self.valid && self.device == device && self.persistent == persistent
    }
}

/// Get Chassis Status, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChassisStatus {
    pub power: PowerState,
    pub overload: bool,
    pub interlock: bool,
    pub power_fault: bool,
    pub power_control_fault: bool,
    /// 0 = stay off, 1 = restore previous state, 2 = power up, 3 = unknown.
    pub restore_policy: u8,
    /// Raw "last power event" byte.
    pub last_power_event: u8,
    /// Raw "misc chassis state" byte (intrusion, front panel lockout, drive/fan fault, …).
    pub misc: u8,
}

/// What [`Bmc::apply_power`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerChange {
    /// Power state read before acting.
    pub before: PowerState,
    /// The control sent (or that check mode would send); `None` = nothing to do.
    pub sent: Option<PowerControl>,
}

impl PowerChange {
    pub fn changed(&self) -> bool {
        self.sent.is_some()
    }
}

/// An open RMCP+ session with a BMC, at the target's privilege level. Closed (Close Session)
/// by [`Bmc::close`] or on drop, so BMC session slots are not leaked.
pub struct Bmc {
    rmcp: Rmcp,
    addr: String,
    user: String,
    timeout: Duration,
    tries: u32,
    session_id: Option<u32>,
    /// The last exchange found the BMC unreachable: drop then tries to close only once.
    unreachable: bool,
    /// The privilege the target asked for, raised to before the first command that needs
    /// more than USER (a status query never pays for the extra exchange).
    privilege: Privilege,
    raised: bool,
}

impl fmt::Debug for Bmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bmc")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl Bmc {
    /// Open an RMCP+ session (cipher suite 3); it is raised to `target.privilege` before the
    /// first command that needs more than USER (power and boot options). Each try
    /// waits `target.timeout` per answer; a timed-out activation is retried from scratch on a
    /// fresh socket, `target.retries` times.
    pub fn connect(target: &Target) -> Result<Bmc, IpmiError> {
        target.validate()?;
        let addr = target.addr();
        let sockaddr = target.resolve()?;
        let tries = target.retries.saturating_add(1);
        let ctx = Ctx {
            addr: &addr,
            user: &target.user,
            stage: "while opening a session",
        };
        let mut unreachable = None;
        for attempt in 1..=tries {
            let started = Instant::now();
            let mut rmcp = Rmcp::new(sockaddr, target.timeout).map_err(|source| IpmiError::Io {
                addr: addr.clone(),
                stage: "preparing the UDP socket".into(),
                source,
            })?;
            let failure = match rmcp.activate_rmcp_plus(
                &target.user,
                target.password.as_bytes(),
                target.privilege.into(),
            ) {
                Ok(()) => {
                    let bmc = Bmc {
                        session_id: rmcp.session_id(),
                        rmcp,
                        addr: addr.clone(),
                        user: target.user.clone(),
                        timeout: target.timeout,
                        tries,
                        unreachable: false,
                        privilege: target.privilege,
                        raised: target.privilege == Privilege::User,
                    };
                    tracing::debug!(bmc = %addr, user = %target.user, session = ?bmc.session_id, "IPMI session open");
                    return Ok(bmc);
                }
                Err(e) => ctx.activation(e),
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Timeout => {
                    tracing::debug!(bmc = %addr, attempt, "no answer while opening an IPMI session");
                    unreachable = None;
                }
                Failure::Unreachable(detail) => {
                    tracing::debug!(bmc = %addr, attempt, %detail, "BMC unreachable");
                    if attempt < tries {
                        std::thread::sleep(target.timeout.saturating_sub(started.elapsed()));
                    }
                    unreachable = Some(detail);
                }
            }
        }
        Err(match unreachable {
            Some(detail) => IpmiError::Unreachable {
                addr,
                tries,
                stage: "while opening a session".to_string(),
                detail,
            },
            None => IpmiError::Timeout {
                addr,
                tries,
                timeout: target.timeout,
                stage: "while opening a session".to_string(),
            },
        })
    }

    /// `host:port` of the BMC.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The BMC's ID of this session (`None` once closed).
    pub fn session_id(&self) -> Option<u32> {
        self.session_id
    }

    /// Send one command, retransmitting on timeout; a non-zero completion code is an error.
    pub fn call<C>(&mut self, what: &str, command: C) -> Result<C::Output, IpmiError>
    where
        C: IpmiCommand,
        C::Error: fmt::Debug,
    {
        let message: Message = command.into();
        let (netfn, cmd) = (message.netfn_raw(), message.cmd());
        let stage = format!("to {what}");
        let ctx = Ctx {
            addr: &self.addr,
            user: &self.user,
            stage: &stage,
        };
        let mut unreachable = None;
        for attempt in 1..=self.tries {
            let started = Instant::now();
            let mut request = Request::new(
                message.clone(),
                RequestTargetAddress::Bmc(LogicalUnit::Zero),
            );
            let failure = match self.rmcp.send_recv(&mut request) {
                Ok(response) => {
                    self.unreachable = false;
                    if response.netfn_raw() != (netfn | 1) || response.cmd() != cmd {
                        return Err(IpmiError::Protocol {
                            addr: self.addr.clone(),
                            stage,
                            detail: format!(
                                "answer to netfn {:#04x} cmd {:#04x} instead of netfn {netfn:#04x} cmd {cmd:#04x}",
                                response.netfn_raw(),
                                response.cmd()
                            ),
                        });
                    }
                    let code = response.cc();
                    if code == 0xD4 {
                        return Err(IpmiError::InsufficientPrivilege {
                            user: self.user.clone(),
                            addr: self.addr.clone(),
                            what: what.to_string(),
                            detail: format!(
                                "completion code {code:#04x} (insufficient privilege level)"
                            ),
                        });
                    }
                    if code != 0 {
                        return Err(IpmiError::Command {
                            addr: self.addr.clone(),
                            command: what.to_string(),
                            code,
                        });
                    }
                    return C::parse_success_response(response.data()).map_err(|e| {
                        IpmiError::Protocol {
                            addr: self.addr.clone(),
                            stage,
                            detail: format!(
                                "cannot parse the answer {:02x?}: {e:?}",
                                response.data()
                            ),
                        }
                    });
                }
                Err(e) => ctx.rmcp(e),
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Timeout => {
                    tracing::debug!(bmc = %self.addr, attempt, what, "no answer, retransmitting");
                    unreachable = None;
                }
                Failure::Unreachable(detail) => {
                    if attempt < self.tries {
                        std::thread::sleep(self.timeout.saturating_sub(started.elapsed()));
                    }
                    unreachable = Some(detail);
                }
            }
        }
        self.unreachable = true;
        Err(match unreachable {
            Some(detail) => IpmiError::Unreachable {
                addr: self.addr.clone(),
                tries: self.tries,
                stage,
                detail,
            },
            None => IpmiError::Timeout {
                addr: self.addr.clone(),
                tries: self.tries,
                timeout: self.timeout,
                stage,
            },
        })
    }

    /// Raise the session to the target's privilege, once (on error, dropping `self` closes
    /// the session).
    fn raise(&mut self, needed_by: &str) -> Result<(), IpmiError> {
        if !self.raised {
            self.set_session_privilege(self.privilege, needed_by)?;
            self.raised = true;
        }
        Ok(())
    }

    fn set_session_privilege(
        &mut self,
        privilege: Privilege,
        needed_by: &str,
    ) -> Result<(), IpmiError> {
        let what = format!("raise the session to {privilege} privilege for {needed_by}");
        match self.call(&what, SetSessionPrivilegeLevel(privilege)) {
            Ok(_) => Ok(()),
            // 0x80: level not available for this user; 0x81: exceeds the channel/user limit;
            // 0x82: cannot disable user level authentication
            Err(IpmiError::Command { code, .. }) if (0x80..=0x82).contains(&code) => {
                Err(IpmiError::InsufficientPrivilege {
                    user: self.user.clone(),
                    addr: self.addr.clone(),
                    what,
                    detail: format!("Set Session Privilege Level answered {code:#04x}"),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Get Chassis Status.
    pub fn chassis_status(&mut self) -> Result<ChassisStatus, IpmiError> {
        self.call("Get Chassis Status", GetChassisStatus)
    }

    /// The chassis power state.
    pub fn power_status(&mut self) -> Result<PowerState, IpmiError> {
        Ok(self.chassis_status()?.power)
    }

    /// Send Chassis Control, unconditionally (see [`Bmc::apply_power`] for idempotence).
    /// NB: a retransmitted `cycle`/`reset` whose first answer was lost may run twice.
    pub fn power(&mut self, control: PowerControl) -> Result<(), IpmiError> {
        let what = format!("Chassis Control ({control})");
        self.raise(&what)?;
        self.call(&what, ChassisControl(control))
    }

    /// Idempotent power action: read the power state, then send what [`PowerControl::plan`]
    /// says (nothing in `check_mode`, which only queries).
    pub fn apply_power(
        &mut self,
        action: PowerControl,
        check_mode: bool,
    ) -> Result<PowerChange, IpmiError> {
        let before = self.power_status()?;
        let sent = action.plan(before);
        if let (Some(control), false) = (sent, check_mode) {
            self.power(control)?;
        }
        Ok(PowerChange { before, sent })
    }

    /// Poll the power state every 200 ms until it is `state` or `within` has passed; returns
    /// whether it was reached. (A `cycle` passes through off; `soft` waits for the OS.)
    pub fn wait_for_power(
        &mut self,
        state: PowerState,
        within: Duration,
    ) -> Result<bool, IpmiError> {
        let deadline = Instant::now() + within;
        loop {
            if self.power_status()? == state {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(200).min(deadline - now));
        }
    }

    /// Set the boot device override (legacy BIOS boot), for the next boot only or persistent.
    pub fn set_bootdev(&mut self, device: BootDevice, persistent: bool) -> Result<(), IpmiError> {
        self.set_boot_flags(device, persistent, false)
    }

    /// Set the boot flags as `ipmitool chassis bootdev DEV [options=persistent,efiboot]` does:
    /// "set in progress", clear the BIOS boot-info acknowledge bit, write the flags (valid bit
    /// set), "set complete". The first two and the last are optional on many BMCs (ipmi_sim
    /// answers 0xCC to "set in progress"), so their completion-code errors are ignored.
    pub fn set_boot_flags(
        &mut self,
        device: BootDevice,
        persistent: bool,
        efi: bool,
    ) -> Result<(), IpmiError> {
        self.raise("Set System Boot Options")?;
        let optional = |r: Result<(), IpmiError>| match r {
            Ok(()) => Ok(true),
            Err(IpmiError::Command { .. }) => Ok(false),
            Err(e) => Err(e),
        };
        let in_progress = optional(self.call(
            "Set System Boot Options (set in progress)",
            SetSystemBootOptions::set_in_progress(true),
        ))?;
        let acked = optional(self.call(
            "Set System Boot Options (boot info acknowledge)",
            SetSystemBootOptions::boot_info_ack(),
        ));
        let result = acked.and_then(|_| {
            self.call(
                &format!("Set System Boot Options (boot device {device})"),
                SetSystemBootOptions::boot_flags(device, persistent, efi),
            )
        });
        if in_progress {
            let done = optional(self.call(
                "Set System Boot Options (set complete)",
                SetSystemBootOptions::set_in_progress(false),
            ));
            if result.is_ok() {
                done?;
            }
        }
        result
    }

    /// Read the boot flags back.
    pub fn get_bootdev(&mut self) -> Result<BootOverride, IpmiError> {
        let what = "Get System Boot Options (boot flags)";
        self.raise(what)?;
        self.call(what, GetBootFlags)
    }

    /// Close the session now (Close Session), reporting failure; dropping does the same
    /// silently.
    pub fn close(mut self) -> Result<(), IpmiError> {
        let tries = self.tries;
        self.close_session(tries)
    }

    fn close_session(&mut self, tries: u32) -> Result<(), IpmiError> {
        let Some(id) = self.session_id.take() else {
            return Ok(());
        };
        let saved = std::mem::replace(&mut self.tries, tries.max(1));
        let result = self.call("Close Session", CloseSession(id));
        self.tries = saved;
        self.rmcp.deactivate();
        if result.is_ok() {
            tracing::debug!(bmc = %self.addr, session = id, "IPMI session closed");
        }
        result
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        let tries = if self.unreachable { 1 } else { self.tries };
        if let Err(e) = self.close_session(tries) {
            tracing::debug!(bmc = %self.addr, error = %e, "closing the IPMI session failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_idempotent() {
        use PowerControl::*;
        use PowerState as S;
        assert_eq!(On.plan(S::On), None);
        assert_eq!(On.plan(S::Off), Some(On));
        assert_eq!(Off.plan(S::Off), None);
        assert_eq!(Off.plan(S::On), Some(Off));
        assert_eq!(Soft.plan(S::Off), None);
        assert_eq!(Soft.plan(S::On), Some(Soft));
        assert_eq!(Cycle.plan(S::On), Some(Cycle));
        assert_eq!(Cycle.plan(S::Off), Some(On));
        assert_eq!(Reset.plan(S::On), Some(Reset));
        assert_eq!(Reset.plan(S::Off), Some(On));
        for a in [On, Off, Cycle, Reset, Soft] {
            assert_eq!(a.as_str().parse::<PowerControl>(), Ok(a));
            // after acting, the same action again is a no-op for on/off/soft
            if matches!(a, On | Off | Soft) {
                assert_eq!(a.plan(a.target_state()), None);
            }
        }
        assert!("boot".parse::<PowerControl>().is_err());
    }

    #[test]
    fn boot_devices_round_trip() {
        for d in [
            "none", "pxe", "disk", "safe", "diag", "cdrom", "bios", "floppy",
        ] {
            let dev: BootDevice = d.parse().unwrap();
            assert_eq!(dev.to_string(), d);
            assert_eq!(BootDevice::from_selector(dev.selector()), dev);
        }
        assert_eq!(BootDevice::from_selector(0x9), BootDevice::Other(9));
        assert!("network".parse::<BootDevice>().is_err());
    }

    #[test]
    fn target_debug_and_validation_hide_the_password() {
        let mut t = Target::new("bmc1", "admin", "s3cr3t-pw");
        let d = format!("{t:?}");
        assert!(!d.contains("s3cr3t-pw") && d.contains("<redacted>"), "{d}");
        assert_eq!(t.addr(), "bmc1:623");
        t.host = "fd00::1".into();
        assert_eq!(t.addr(), "[fd00::1]:623");
        t.host = "[fd00::1]".into();
        assert_eq!(t.addr(), "[fd00::1]:623");
        t.password = "a-password-that-is-too-long".into();
        let e = t.validate().unwrap_err().to_string();
        assert!(!e.contains("a-password") && e.contains("27 bytes"), "{e}");
        t.password = "ok".into();
        t.user = "a-user-name-longer-than-16".into();
        assert!(t.validate().is_err());
        t.user = "admin".into();
        t.timeout = Duration::ZERO;
        assert!(t.validate().is_err());
    }
}
