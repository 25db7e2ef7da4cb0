//! `duffy_tenant`: an Ansible binary module (`duffy_tenant <args.json>`); see `duffy::ansible::tenant`
//! and `modules/duffy_tenant.yml`.

fn main() {
    duffy::ansible::main(&duffy::ansible::tenant::MODULE)
}
