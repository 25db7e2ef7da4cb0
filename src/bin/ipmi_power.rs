//! `ipmi_power`: an Ansible binary module (`ipmi_power <args.json>`); see
//! `duffy::ansible::ipmi_power` and `modules/ipmi_power.yml`.

fn main() {
    duffy::ansible::main(&duffy::ansible::ipmi_power::MODULE)
}
