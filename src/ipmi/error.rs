//! [`IpmiError`]: what went wrong talking to a BMC, in words an operator can act on, and the
//! mapping from ipmi-rs's nested protocol errors onto it.
//!
//! No message ever contains the password: none of the variants holds it, and the `detail`
//! strings are `Debug` renderings of ipmi-rs errors, which carry status codes and I/O errors only
//! (ipmi-rs's own `Debug` of its crypto state redacts the password, and it is never formatted here).

use std::io;
use std::time::Duration;

use ipmi_rs::rmcp::{
    ActivationError, OpenSessionResponseErrorStatusCode as OsStatus, ParseSessionResponseError,
    RakpErrorStatusCode, RakpMessage2ErrorStatusCode as Rakp2Status, RakpMessage2ParseError,
    RakpMessage4ParseError, RmcpIpmiError, RmcpIpmiReceiveError, RmcpIpmiSendError,
    V2_0ActivationError, V2_0WriteError, ValidateSessionResponseError,
};

/// The cipher suite ipmi-rs speaks (the only one).
pub const CIPHER_SUITE: &str =
    "cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96 integrity, AES-CBC-128 confidentiality)";

/// Errors of [`super::Bmc`]. `addr` is `host:port` as given in the [`super::Target`].
#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    /// The target is unusable before anything is sent (empty host, user name too long, …).
    #[error("invalid IPMI target: {0}")]
    InvalidTarget(String),
    /// The host name does not resolve.
    #[error("cannot resolve BMC address {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// Nothing answered: every try waited `timeout` in vain.
    #[error(
        "no answer from BMC at {addr} after {tries} {} of {} each {stage}{hint}",
        if *tries == 1 { "try" } else { "tries" },
        fmt_duration(*timeout),
        hint = if stage.starts_with("while opening") {
            " (is the address right, and IPMI over LAN enabled on the BMC?)"
        } else {
            ""
        }
    )]
    Timeout {
        addr: String,
        tries: u32,
        timeout: Duration,
        /// e.g. "while opening a session", "to Get Chassis Status".
        stage: String,
    },
    /// The network said no (ICMP port/host unreachable), on every try.
    #[error("BMC at {addr} is unreachable {stage} ({tries} {}): {detail}", if *tries == 1 { "try" } else { "tries" })]
    Unreachable {
        addr: String,
        tries: u32,
        /// as in [`IpmiError::Timeout`]
        stage: String,
        detail: String,
    },
    /// Wrong password or unknown user.
    #[error("authentication failed for user {user:?} at {addr}: {reason}")]
    AuthFailed {
        user: String,
        addr: String,
        reason: String,
    },
    /// The BMC and ipmi-rs have no cipher suite in common.
    #[error("BMC at {addr} does not accept {CIPHER_SUITE}, the only one duffy's IPMI client (ipmi-rs) speaks: {detail}; enable cipher suite 3 on the BMC")]
    UnsupportedCipherSuite { addr: String, detail: String },
    /// The BMC answered but has no IPMI 2.0 / RMCP+ (duffy does not fall back to IPMI 1.5).
    #[error("BMC at {addr} does not offer IPMI 2.0 (RMCP+) sessions; duffy does not use IPMI 1.5")]
    NoRmcpPlus { addr: String },
    /// The user may not do this (session privilege or a command's required privilege).
    #[error("insufficient privilege: user {user:?} at {addr} may not {what}: {detail}")]
    InsufficientPrivilege {
        user: String,
        addr: String,
        what: String,
        detail: String,
    },
    /// The BMC has no free session slot.
    #[error("BMC at {addr} has no free session slot (too many open sessions; the BMC frees idle ones after its session timeout)")]
    NoSessionSlot { addr: String },
    /// The BMC answered a command with a non-zero completion code.
    #[error("BMC at {addr} refused {command}: completion code {code:#04x} ({})", completion_code_meaning(*code))]
    Command {
        addr: String,
        command: String,
        code: u8,
    },
    /// Malformed or unexpected packets.
    #[error("IPMI protocol error with BMC at {addr} {stage}: {detail}")]
    Protocol {
        addr: String,
        stage: String,
        detail: String,
    },
    /// A local I/O error (binding the UDP socket, …).
    #[error("I/O error talking to BMC at {addr} {stage}: {source}")]
    Io {
        addr: String,
        stage: String,
        #[source]
        source: io::Error,
    },
}

impl IpmiError {
    /// Whether the BMC could not be reached at all ([`Timeout`](Self::Timeout) or
    /// [`Unreachable`](Self::Unreachable)).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unreachable { .. })
    }

    /// A short stable name of the variant, e.g. for a module's result (`"auth_failed"`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidTarget(_) => "invalid_target",
            Self::Resolve { .. } => "resolve",
            Self::Timeout { .. } => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::AuthFailed { .. } => "auth_failed",
            Self::UnsupportedCipherSuite { .. } => "unsupported_cipher_suite",
            Self::NoRmcpPlus { .. } => "no_rmcp_plus",
            Self::InsufficientPrivilege { .. } => "insufficient_privilege",
            Self::NoSessionSlot { .. } => "no_session_slot",
            Self::Command { .. } => "command",
            Self::Protocol { .. } => "protocol",
            Self::Io { .. } => "io",
        }
    }
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Generic completion codes (IPMI 2.0 table 5-2) and the Set Session Privilege Level ones.
pub fn completion_code_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "ok",
        0x80 => {
            "command-specific: e.g. parameter not supported / level not available for this user"
        }
        0x81 => "command-specific: e.g. level exceeds the channel or user privilege limit",
        0x82 => "command-specific",
        0xC0 => "node busy",
        0xC1 => "invalid or unsupported command",
        0xC2 => "command invalid for the given LUN",
        0xC3 => "timeout while processing the command",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid reservation ID",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return the number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request (the BMC may not support this operation)",
        0xCD => "command illegal for the specified sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "command not supported in the present state",
        0xD6 => "sub-function disabled or unavailable",
        0xFF => "unspecified error",
        0x01..=0x7E => "OEM code",
        _ => "command-specific or reserved code",
    }
}

/// How one failed exchange should be treated by the retry loop.
pub(crate) enum Failure {
    /// No answer within the timeout: retransmit.
    Timeout,
    /// ICMP unreachable (connection refused, host/network unreachable): retry after the timeout.
    Unreachable(String),
    /// Anything else: give up at once with this error.
    Fatal(IpmiError),
}

/// What the retry loop needs to know to build errors.
pub(crate) struct Ctx<'a> {
    pub addr: &'a str,
    pub user: &'a str,
    pub stage: &'a str,
}

impl Ctx<'_> {
    fn protocol(&self, detail: String) -> Failure {
        Failure::Fatal(IpmiError::Protocol {
            addr: self.addr.to_string(),
            stage: self.stage.to_string(),
            detail,
        })
    }

    fn auth(&self, reason: &str) -> Failure {
        Failure::Fatal(IpmiError::AuthFailed {
            user: self.user.to_string(),
            addr: self.addr.to_string(),
            reason: reason.to_string(),
        })
    }

    fn cipher(&self, detail: String) -> Failure {
        Failure::Fatal(IpmiError::UnsupportedCipherSuite {
            addr: self.addr.to_string(),
            detail,
        })
    }

    fn privilege(&self, what: &str, detail: String) -> Failure {
        Failure::Fatal(IpmiError::InsufficientPrivilege {
            user: self.user.to_string(),
            addr: self.addr.to_string(),
            what: what.to_string(),
            detail,
        })
    }

    fn no_slot(&self) -> Failure {
        Failure::Fatal(IpmiError::NoSessionSlot {
            addr: self.addr.to_string(),
        })
    }

    /// An I/O error of a send or receive.
    pub fn io(&self, e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            io::ErrorKind::ConnectionRefused => Failure::Unreachable(
                "connection refused (ICMP port unreachable): nothing listens on that UDP port"
                    .to_string(),
            ),
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Failure::Unreachable(e.to_string())
            }
            _ => Failure::Fatal(IpmiError::Io {
                addr: self.addr.to_string(),
                stage: self.stage.to_string(),
                source: e,
            }),
        }
    }

    fn write(&self, e: V2_0WriteError) -> Failure {
        match e {
            V2_0WriteError::Io(e) => self.io(e),
            other => self.protocol(format!("cannot send: {other:?}")),
        }
    }

    fn receive(&self, e: RmcpIpmiReceiveError) -> Failure {
        match e {
            RmcpIpmiReceiveError::Io(e) => self.io(e),
            other => self.protocol(format!("bad packet received: {other:?}")),
        }
    }

    /// An error of an exchange inside an active session.
    pub fn rmcp(&self, e: RmcpIpmiError) -> Failure {
        match e {
            RmcpIpmiError::Receive(r) => self.receive(r),
            RmcpIpmiError::Send(RmcpIpmiSendError::V2_0(w)) => self.write(w),
            RmcpIpmiError::Send(RmcpIpmiSendError::V1_5(w)) => {
                self.protocol(format!("cannot send: {w:?}"))
            }
            RmcpIpmiError::NotActive => self.protocol("the session is not active".to_string()),
        }
    }

    /// An error of the session activation (ping, Get Channel Authentication Capabilities,
    /// Open Session, RAKP 1–4).
    pub fn activation(&self, e: ActivationError) -> Failure {
        use ActivationError as A;
        use V2_0ActivationError as V2;
        match e {
            A::BindSocket(e) => Failure::Fatal(IpmiError::Io {
                addr: self.addr.to_string(),
                stage: "binding a local UDP socket".to_string(),
                source: e,
            }),
            A::PingSend(e) | A::PongReceive(e) => self.io(e),
            A::PongRead => self.protocol("malformed answer to the RMCP presence ping".into()),
            A::IpmiNotSupported => {
                self.protocol("the host answers the RMCP ping but does not support IPMI".into())
            }
            A::NoSupportedIpmiLANVersions => Failure::Fatal(IpmiError::NoRmcpPlus {
                addr: self.addr.to_string(),
            }),
            A::GetChannelAuthenticationCapabilities(e) => match e {
                ipmi_rs::IpmiError::Connection(c) => self.rmcp(c),
                other => self.protocol(format!(
                    "Get Channel Authentication Capabilities failed: {other:?}"
                )),
            },
            A::RmcpError(e) => self.protocol(format!("bad RMCP header: {e:?}")),
            A::V1_5(e) => self.protocol(format!("IPMI 1.5 activation failed: {e:?}")),
            A::V2_0(e) => match e {
                V2::Io(e) => self.io(e),
                V2::OpenSessionRequestSend(w) | V2::SendRakpMessage1(w) | V2::RakpMessage3Send(w) => {
                    self.write(w)
                }
                V2::OpenSessionResponseReceive(r)
                | V2::RakpMessage2Receive(r)
                | V2::RakpMessage4Receive(r) => self.receive(r),
                V2::OpenSessionResponseParse(ParseSessionResponseError::HaveErrorCode(code)) => {
                    self.open_session_status(code)
                }
                V2::OpenSessionResponseValidate(ValidateSessionResponseError::AlgorithmMismatch {
                    authentication,
                    integrity,
                    confidentiality,
                }) => self.cipher(format!(
                    "it answered the session request with {authentication:?}, {integrity:?}, {confidentiality:?}"
                )),
                V2::RakpMessage2Parse(RakpMessage2ParseError::ErrorStatusCode(code)) => {
                    self.rakp2_status(code)
                }
                V2::ServerAuthenticationFailed => self.auth(
                    "wrong password, or the BMC does not know the user (its RAKP 2 key exchange code does not match the password)",
                ),
                V2::RakpMessage4Parse(RakpMessage4ParseError::ErrorStatusCode(code)) => {
                    self.auth(&format!("the BMC rejected the RAKP 3 proof ({code:?})"))
                }
                V2::RakpMessage4InvalidIntegrityCheckValue => {
                    self.auth("the BMC's RAKP 4 integrity check value does not match")
                }
                other => self.protocol(format!("RMCP+ session activation failed: {other:?}")),
            },
        }
    }

    fn open_session_status(&self, code: Result<OsStatus, u8>) -> Failure {
        match code {
            Ok(
                c @ (OsStatus::NoMatchingCipherSuite
                | OsStatus::InvalidAuthenticationAlgorithm
                | OsStatus::InvalidIntegrityAlgorithm
                | OsStatus::InvalidConfidentialityAlgorithm
                | OsStatus::NoMatchingAuthenticationPayload
                | OsStatus::NoMatchingIntegrityPayload),
            ) => self.cipher(format!("Open Session answered {c:?}")),
            Ok(OsStatus::CommonRakp(
                RakpErrorStatusCode::InsufficientResourcesForSessionCreation,
            )) => self.no_slot(),
            Ok(OsStatus::InvalidRole) => self.privilege(
                "open a session at the requested privilege level",
                "Open Session answered InvalidRole".to_string(),
            ),
            Ok(other) => self.protocol(format!("Open Session answered {other:?}")),
            Err(raw) => self.protocol(format!("Open Session answered status code {raw:#04x}")),
        }
    }

    fn rakp2_status(&self, code: Rakp2Status) -> Failure {
        match code {
            Rakp2Status::UnauthorizedName => self.auth("the BMC does not know this user name"),
            Rakp2Status::InvalidNameLength => self.auth("the BMC rejects the user name's length"),
            Rakp2Status::InvalidRole | Rakp2Status::UnauthorizedRoleOrPrivilegeLevelRequested => {
                self.privilege(
                    "open a session at the requested privilege level",
                    format!("RAKP 2 answered {code:?}"),
                )
            }
            Rakp2Status::InsufficientResourcesToCreateSessionAtRequestedRole
            | Rakp2Status::Common(RakpErrorStatusCode::InsufficientResourcesForSessionCreation) => {
                self.no_slot()
            }
            other => self.protocol(format!("RAKP 2 answered {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx<'static> {
        Ctx {
            addr: "bmc1:623",
            user: "admin",
            stage: "while opening a session",
        }
    }

    fn fatal(f: Failure) -> IpmiError {
        match f {
            Failure::Fatal(e) => e,
            _ => panic!("not fatal"),
        }
    }

    #[test]
    fn cipher_suite_mismatch_is_named() {
        let e = fatal(ctx().open_session_status(Ok(OsStatus::NoMatchingCipherSuite)));
        assert_eq!(e.kind(), "unsupported_cipher_suite");
        let m = e.to_string();
        assert!(
            m.contains("bmc1:623") && m.contains("cipher suite 3"),
            "{m}"
        );
    }

    #[test]
    fn auth_and_privilege_statuses() {
        let e = fatal(ctx().rakp2_status(Rakp2Status::UnauthorizedName));
        assert_eq!(
            e.to_string(),
            "authentication failed for user \"admin\" at bmc1:623: the BMC does not know this user name"
        );
        let e = fatal(ctx().rakp2_status(Rakp2Status::UnauthorizedRoleOrPrivilegeLevelRequested));
        assert_eq!(e.kind(), "insufficient_privilege");
        let e = fatal(ctx().open_session_status(Ok(OsStatus::CommonRakp(
            RakpErrorStatusCode::InsufficientResourcesForSessionCreation,
        ))));
        assert_eq!(e.kind(), "no_session_slot");
    }

    #[test]
    fn io_errors_are_classified() {
        assert!(matches!(
            ctx().io(io::Error::from(io::ErrorKind::WouldBlock)),
            Failure::Timeout
        ));
        assert!(matches!(
            ctx().io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            Failure::Unreachable(_)
        ));
        assert!(matches!(
            ctx().io(io::Error::from(io::ErrorKind::PermissionDenied)),
            Failure::Fatal(IpmiError::Io { .. })
        ));
    }

    #[test]
    fn timeout_message() {
        let e = IpmiError::Timeout {
            addr: "10.0.0.1:623".into(),
            tries: 3,
            timeout: Duration::from_millis(500),
            stage: "while opening a session".into(),
        };
        let m = e.to_string();
        assert!(
            m.starts_with("no answer from BMC at 10.0.0.1:623 after 3 tries of 500ms each while opening a session ("),
            "{m}"
        );
        let e = IpmiError::Command {
            addr: "b:623".into(),
            command: "Chassis Control (cycle)".into(),
            code: 0xD5,
        };
        assert_eq!(
            e.to_string(),
            "BMC at b:623 refused Chassis Control (cycle): completion code 0xd5 (command not supported in the present state)"
        );
    }
}
