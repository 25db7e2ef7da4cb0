//! `duffy config check|dump`: validate and show the effective merged configuration, secrets
//! masked.

use clap::Subcommand;

use super::CliResult;
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate the configuration and print the effective merged config (secrets masked)
    Check,
    /// Print the effective merged config as YAML (secrets masked)
    Dump,
}

pub fn run(cmd: ConfigCmd, cfg: &Config) -> CliResult {
    let masked = serde_yaml::to_string(&cfg.raw.masked()).unwrap_or_default();
    match cmd {
        ConfigCmd::Check => {
            if cfg.raw.value.is_empty() {
                println!("Configuration is empty.");
                return Ok(());
            }
            println!("OK.");
            println!(
                "Validated configuration subkeys: {}",
                cfg.sections().join(", ")
            );
            let files: Vec<String> = cfg
                .raw
                .files
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            println!("Files (in merge order): {}", files.join(", "));
            if let Ok(url) = cfg.database_url() {
                println!("Database: {}", crate::config::mask_url(&url));
            }
            let concrete: Vec<&str> = cfg.concrete_pools().map(|p| p.name.as_str()).collect();
            if !concrete.is_empty() {
                println!("Concrete pools: {}", concrete.join(", "));
            }
            // stated even when unset: it decides who can read node data through the API
            let anon = cfg.app.anonymous_reads;
            println!(
                "Anonymous reads: {} (app.anonymous-reads: {anon})",
                if anon { "allowed" } else { "refused" }
            );
            let a = &cfg.app.auth;
            println!(
                "Authentication: {} bcrypt worker(s); 429 after {} wrong keys per tenant name \
                 and client address, {} per address, back-off up to {} s (app.auth)",
                a.bcrypt_workers, a.failures_per_tenant, a.failures_per_address, a.max_backoff
            );
            if let Some(b) = &cfg.events.beanstalkd {
                println!(
                    "Event bus: beanstalkd {}, tube {} (events.beanstalkd)",
                    b.host_port(),
                    b.tube
                );
            }
            // stated even when unset: /metrics names tenants and pools
            let serve = match cfg.app.metrics {
                crate::config::MetricsAccess::Public => "GET /metrics public",
                crate::config::MetricsAccess::Admin => "GET /metrics for admin tenants",
                crate::config::MetricsAccess::Off => "no GET /metrics",
            };
            let sched = match &cfg.scheduler.metrics_listen {
                Some(a) => format!("scheduler on http://{a}/metrics"),
                None => "no scheduler listener (scheduler.metrics-listen unset)".into(),
            };
            println!("Metrics: serve: {serve} (app.metrics); {sched}");
            println!("---");
            print!("{masked}");
        }
        ConfigCmd::Dump => print!("{masked}"),
    }
    Ok(())
}
