//! `duffy_session`: an Ansible binary module (`duffy_session <args.json>`); see `duffy::ansible::session`
//! and `modules/duffy_session.yml`.

fn main() {
    duffy::ansible::main(&duffy::ansible::session::MODULE)
}
