//! `duffy-inventory`: the Ansible / AWX dynamic inventory over the duffy database.
//!
//! Ansible runs it as `duffy-inventory --list` (or `--host NAME`) with no other argument, so the
//! config comes from the usual lookup (`$DUFFY_CONFIG`, else `/etc/duffy` + `~/.config/duffy`)
//! and `$DUFFY_DATABASE_URL`. On failure: one line on stderr, exit 1 (2 for configuration);
//! nothing on stderr otherwise (Ansible prints any stderr as an error). See inventory/README.md.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use duffy::inventory::{self, Query};

#[derive(Parser, Debug)]
#[command(
    name = "duffy-inventory",
    version,
    about = "Ansible dynamic inventory over the duffy database (groups by pool, state, tenant, session)"
)]
struct Args {
    /// Print every group and all hosts' variables (what Ansible calls)
    #[arg(long, required_unless_present = "host", conflicts_with = "host")]
    list: bool,
    /// Print the variables of one host (`{}` if unknown)
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Config file or directory (repeatable; default: $DUFFY_CONFIG, else /etc/duffy and ~/.config/duffy)
    #[arg(short = 'c', long = "config", value_name = "FILE|DIR")]
    config: Vec<PathBuf>,
    /// Indent the JSON
    #[arg(long)]
    pretty: bool,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let query = match args.host {
        Some(h) => Query::Host(h),
        None => Query::List,
    };
    // stdout through a plain file handle (a dup of fd 1, same offset): Rust's line-buffered
    // stdout would search every chunk of the several-MB document for newlines
    let stdout = std::io::stdout();
    let mut out: Box<dyn Write> = match stdout.as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(stdout.lock()),
    };
    match inventory::run(&args.config, &query, args.pretty, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duffy-inventory: {}", e.to_string().replace('\n', " "));
            ExitCode::from(e.exit_code())
        }
    }
}
