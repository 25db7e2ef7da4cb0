//! The IPMI commands ipmi-rs 0.6 lacks, as [`IpmiCommand`] implementations (ipmi-rs's public
//! extension point): Chassis Get Status / Chassis Control / Set and Get System Boot Options
//! (IPMI 2.0 spec §28.2, §28.3, §28.12, §28.13) and the session commands Set Session Privilege
//! Level / Close Session (§22.18, §22.19). They work with `ipmi_rs::Ipmi::send_recv` too; duffy
//! sends them through [`super::Bmc`], which adds retransmission and typed errors.

use ipmi_rs::connection::{IpmiCommand, Message, NetFn, NotEnoughData};

use super::{BootDevice, BootOverride, ChassisStatus, PowerControl, PowerState, Privilege};

/// Chassis commands (NetFn Chassis).
pub(crate) const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
pub(crate) const CMD_CHASSIS_CONTROL: u8 = 0x02;
pub(crate) const CMD_SET_SYSTEM_BOOT_OPTIONS: u8 = 0x08;
pub(crate) const CMD_GET_SYSTEM_BOOT_OPTIONS: u8 = 0x09;
/// Session commands (NetFn App).
pub(crate) const CMD_SET_SESSION_PRIVILEGE_LEVEL: u8 = 0x3B;
pub(crate) const CMD_CLOSE_SESSION: u8 = 0x3C;

/// Boot option parameter selectors (§28.13, table 28-14).
pub(crate) const BOOT_PARAM_SET_IN_PROGRESS: u8 = 0;
pub(crate) const BOOT_PARAM_INFO_ACK: u8 = 4;
pub(crate) const BOOT_PARAM_FLAGS: u8 = 5;

/// Get Chassis Status (Chassis 0x01): power state and faults.
#[derive(Debug, Clone, Copy)]
pub struct GetChassisStatus;

impl From<GetChassisStatus> for Message {
    fn from(_: GetChassisStatus) -> Self {
        Message::new_request(NetFn::Chassis, CMD_GET_CHASSIS_STATUS, vec![])
    }
}

impl IpmiCommand for GetChassisStatus {
    type Output = ChassisStatus;
    type Error = NotEnoughData;

    fn parse_success_response(data: &[u8]) -> Result<ChassisStatus, NotEnoughData> {
        // byte 1: current power state; byte 2: last power event; byte 3: misc chassis state;
        // byte 4 (front panel) is optional.
        if data.len() < 3 {
            return Err(NotEnoughData);
        }
        let p = data[0];
        Ok(ChassisStatus {
            power: if p & 0x01 != 0 {
                PowerState::On
            } else {
                PowerState::Off
            },
            overload: p & 0x02 != 0,
            interlock: p & 0x04 != 0,
            power_fault: p & 0x08 != 0,
            power_control_fault: p & 0x10 != 0,
            restore_policy: (p >> 5) & 0x03,
            last_power_event: data[1],
            misc: data[2],
        })
    }
}

/// Chassis Control (Chassis 0x02).
#[derive(Debug, Clone, Copy)]
pub struct ChassisControl(pub PowerControl);

impl From<ChassisControl> for Message {
    fn from(c: ChassisControl) -> Self {
        Message::new_request(NetFn::Chassis, CMD_CHASSIS_CONTROL, vec![c.0.code()])
    }
}

impl IpmiCommand for ChassisControl {
    type Output = ();
    type Error = NotEnoughData;

    fn parse_success_response(_: &[u8]) -> Result<(), NotEnoughData> {
        Ok(())
    }
}

/// Set System Boot Options (Chassis 0x08) with a raw parameter: selector + data.
#[derive(Debug, Clone)]
pub struct SetSystemBootOptions {
    pub parameter: u8,
    pub data: Vec<u8>,
}

impl SetSystemBootOptions {
    /// Parameter 0, "set in progress": 1 = set in progress, 0 = set complete.
    pub fn set_in_progress(in_progress: bool) -> Self {
        Self {
            parameter: BOOT_PARAM_SET_IN_PROGRESS,
            data: vec![u8::from(in_progress)],
        }
    }

    /// Parameter 4, "boot info acknowledge": clear the "BIOS/POST has handled the boot info"
    /// bit (write mask 0x01, value 0x01 as ipmitool sends it), so the BIOS picks the new flags up.
    pub fn boot_info_ack() -> Self {
        Self {
            parameter: BOOT_PARAM_INFO_ACK,
            data: vec![0x01, 0x01],
        }
    }

    /// Parameter 5, "boot flags" (table 28-14): byte 1 bit 7 = flags valid, bit 6 =
    /// persistent (else next boot only), bit 5 = EFI boot (else legacy); byte 2 bits 5:2 = the
    /// device selector; bytes 3–5 zero (no BIOS verbosity/console/mux overrides).
    pub fn boot_flags(device: BootDevice, persistent: bool, efi: bool) -> Self {
        let mut b1 = 0x80;
        if persistent {
            b1 |= 0x40;
        }
        if efi {
            b1 |= 0x20;
        }
        Self {
            parameter: BOOT_PARAM_FLAGS,
            data: vec![b1, (device.selector() & 0x0F) << 2, 0, 0, 0],
        }
    }
}

impl From<SetSystemBootOptions> for Message {
    fn from(c: SetSystemBootOptions) -> Self {
        // Parameter byte bit 7 = 0: "mark parameter valid / unlocked".
        let mut data = Vec::with_capacity(1 + c.data.len());
        data.push(c.parameter & 0x7F);
        data.extend_from_slice(&c.data);
        Message::new_request(NetFn::Chassis, CMD_SET_SYSTEM_BOOT_OPTIONS, data)
    }
}

impl IpmiCommand for SetSystemBootOptions {
    type Output = ();
    type Error = NotEnoughData;

    fn parse_success_response(_: &[u8]) -> Result<(), NotEnoughData> {
        Ok(())
    }
}

/// Get System Boot Options (Chassis 0x09) for parameter 5, the boot flags.
#[derive(Debug, Clone, Copy)]
pub struct GetBootFlags;

impl From<GetBootFlags> for Message {
    fn from(_: GetBootFlags) -> Self {
        // parameter selector, set selector, block selector
        Message::new_request(
            NetFn::Chassis,
            CMD_GET_SYSTEM_BOOT_OPTIONS,
            vec![BOOT_PARAM_FLAGS, 0, 0],
        )
    }
}

impl IpmiCommand for GetBootFlags {
    type Output = BootOverride;
    type Error = NotEnoughData;

    fn parse_success_response(data: &[u8]) -> Result<BootOverride, NotEnoughData> {
        // byte 1: parameter version; byte 2: bit 7 = parameter invalid/locked, bits 6:0 =
        // selector; bytes 3..8: the five boot flag bytes.
        if data.len() < 4 || data[1] & 0x7F != BOOT_PARAM_FLAGS {
            return Err(NotEnoughData);
        }
        let b1 = data[2];
        let b2 = data[3];
        Ok(BootOverride {
            device: BootDevice::from_selector((b2 >> 2) & 0x0F),
            valid: b1 & 0x80 != 0,
            persistent: b1 & 0x40 != 0,
            efi: b1 & 0x20 != 0,
            locked: data[1] & 0x80 != 0,
        })
    }
}

/// Set Session Privilege Level (App 0x3B). An RMCP+ session starts at USER level whatever
/// maximum it was opened with, so without this Chassis Control answers 0xD4.
#[derive(Debug, Clone, Copy)]
pub struct SetSessionPrivilegeLevel(pub Privilege);

impl From<SetSessionPrivilegeLevel> for Message {
    fn from(c: SetSessionPrivilegeLevel) -> Self {
        Message::new_request(
            NetFn::App,
            CMD_SET_SESSION_PRIVILEGE_LEVEL,
            vec![c.0.code()],
        )
    }
}

impl IpmiCommand for SetSessionPrivilegeLevel {
    /// The new privilege level (low nibble), as the BMC reports it.
    type Output = u8;
    type Error = NotEnoughData;

    fn parse_success_response(data: &[u8]) -> Result<u8, NotEnoughData> {
        data.first().map(|b| b & 0x0F).ok_or(NotEnoughData)
    }
}

/// Close Session (App 0x3C) by the BMC's session ID (which ipmi-rs keeps private upstream; the
/// vendored copy exposes it as `Rmcp::session_id`).
#[derive(Debug, Clone, Copy)]
pub struct CloseSession(pub u32);

impl From<CloseSession> for Message {
    fn from(c: CloseSession) -> Self {
        Message::new_request(NetFn::App, CMD_CLOSE_SESSION, c.0.to_le_bytes().to_vec())
    }
}

impl IpmiCommand for CloseSession {
    type Output = ();
    type Error = NotEnoughData;

    fn parse_success_response(_: &[u8]) -> Result<(), NotEnoughData> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(m: impl Into<Message>) -> (u8, u8, Vec<u8>) {
        let m = m.into();
        (m.netfn_raw(), m.cmd(), m.data().to_vec())
    }

    #[test]
    fn chassis_control_codes_follow_the_spec() {
        for (c, code) in [
            (PowerControl::Off, 0),
            (PowerControl::On, 1),
            (PowerControl::Cycle, 2),
            (PowerControl::Reset, 3),
            (PowerControl::Soft, 5),
        ] {
            assert_eq!(bytes(ChassisControl(c)), (0x00, 0x02, vec![code]));
        }
    }

    #[test]
    fn boot_flags_bytes_match_ipmitool() {
        // `ipmitool chassis bootdev pxe` → 05 80 04 00 00 00
        let m = SetSystemBootOptions::boot_flags(BootDevice::Pxe, false, false);
        assert_eq!(bytes(m), (0x00, 0x08, vec![0x05, 0x80, 0x04, 0, 0, 0]));
        // `… bootdev disk options=persistent` → 05 c0 08 00 00 00
        let m = SetSystemBootOptions::boot_flags(BootDevice::Disk, true, false);
        assert_eq!(bytes(m), (0x00, 0x08, vec![0x05, 0xC0, 0x08, 0, 0, 0]));
        // `… bootdev pxe options=persistent,efiboot` → 05 e0 04 00 00 00
        let m = SetSystemBootOptions::boot_flags(BootDevice::Pxe, true, true);
        assert_eq!(bytes(m), (0x00, 0x08, vec![0x05, 0xE0, 0x04, 0, 0, 0]));
        assert_eq!(
            bytes(SetSystemBootOptions::set_in_progress(true)),
            (0x00, 0x08, vec![0x00, 0x01])
        );
        assert_eq!(
            bytes(SetSystemBootOptions::boot_info_ack()),
            (0x00, 0x08, vec![0x04, 0x01, 0x01])
        );
    }

    #[test]
    fn get_boot_flags_parses_the_response() {
        assert_eq!(bytes(GetBootFlags), (0x00, 0x09, vec![5, 0, 0]));
        let o = GetBootFlags::parse_success_response(&[0x01, 0x05, 0xC0, 0x04, 0, 0, 0]).unwrap();
        assert_eq!(
            o,
            BootOverride {
                device: BootDevice::Pxe,
                valid: true,
                persistent: true,
                efi: false,
                locked: false
            }
        );
        assert!(o.matches(BootDevice::Pxe, true));
        assert!(!o.matches(BootDevice::Pxe, false));
        assert!(!o.matches(BootDevice::Disk, true));
        // what ipmi_sim answers after `bootdev disk`: valid bit never set
        let o = GetBootFlags::parse_success_response(&[0x01, 0x05, 0x00, 0x08, 0, 0, 0]).unwrap();
        assert_eq!(o.device, BootDevice::Disk);
        assert!(!o.valid && !o.matches(BootDevice::Disk, false));
        assert!(GetBootFlags::parse_success_response(&[0x01, 0x05]).is_err());
        assert!(GetBootFlags::parse_success_response(&[0x01, 0x04, 0, 0]).is_err());
    }

    #[test]
    fn chassis_status_parses_power_and_faults() {
        let s = GetChassisStatus::parse_success_response(&[0x41, 0x00, 0x00]).unwrap();
        assert_eq!(s.power, PowerState::On);
        assert_eq!(s.restore_policy, 2);
        assert!(!s.power_fault);
        let s = GetChassisStatus::parse_success_response(&[0x08, 0x10, 0x00, 0x00]).unwrap();
        assert_eq!(s.power, PowerState::Off);
        assert!(s.power_fault);
        assert!(GetChassisStatus::parse_success_response(&[0x01]).is_err());
    }

    #[test]
    fn session_commands() {
        assert_eq!(
            bytes(SetSessionPrivilegeLevel(Privilege::Administrator)),
            (0x06, 0x3B, vec![4])
        );
        assert_eq!(
            bytes(SetSessionPrivilegeLevel(Privilege::Operator)),
            (0x06, 0x3B, vec![3])
        );
        assert_eq!(
            bytes(CloseSession(0x1234_5678)),
            (0x06, 0x3C, vec![0x78, 0x56, 0x34, 0x12])
        );
        assert_eq!(
            SetSessionPrivilegeLevel::parse_success_response(&[0x04]),
            Ok(4)
        );
    }
}
