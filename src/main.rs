//! The `duffy` command: see `duffy --help` and README.md.
fn main() -> std::process::ExitCode {
    duffy::cli::main()
}
