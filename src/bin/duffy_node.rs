//! `duffy_node`: an Ansible binary module (`duffy_node <args.json>`); see `duffy::ansible::node`
//! and `modules/duffy_node.yml`.

fn main() {
    duffy::ansible::main(&duffy::ansible::node::MODULE)
}
