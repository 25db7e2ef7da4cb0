//! `duffy stats`: per-pool node counts for operators and monitoring — the numbers of upstream's
//! cron scripts (compat spec §11.4), natively: `text` is `duffy-stats`' output, `zabbix` the
//! `duffy.nodes.<state>.[<pool>]` items of `duffy-zabbix-stats` as a `zabbix_sender -i -` input,
//! `zabbix-lld` the low-level-discovery line of `duffy-lld-zabbix`, `json` for everything else.
//! (Upstream's script also failed nodes stuck in `provisioning`; the scheduler recovers those.)

use clap::{Args, ValueEnum};
use regex::Regex;
use serde_json::json;

use super::{CliError, CliResult};
use crate::config::Config;
use crate::db::pools::{self, PoolStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// upstream's `duffy-stats`: `[<pool>]: <ready> | <deployed> | <provisioning>`
    Text,
    Json,
    /// `- duffy.nodes.<state>.[<pool>] <count>` lines for `zabbix_sender -i -`
    Zabbix,
    /// `- duffy.lld.pools {"data": …}` for `zabbix_sender -i -` (pool discovery)
    ZabbixLld,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: StatsFormat,
    /// Leave out pools whose name matches this regular expression (upstream's Zabbix scripts
    /// leave out `seamicro`)
    #[arg(long, value_name = "REGEX")]
    pub exclude: Option<String>,
}

/// The document for `stats` in `format`.
pub fn render(stats: &[PoolStats], format: StatsFormat) -> String {
    let mut out = String::new();
    match format {
        StatsFormat::Text => {
            out.push_str("[+] Duffy Pool status : Ready | Deployed | Provisioning : \n");
            for s in stats {
                out.push_str(&format!(
                    "[{}]: {} | {} | {}\n",
                    s.pool, s.ready, s.deployed, s.provisioning
                ));
            }
        }
        StatsFormat::Json => {
            let pools: Vec<_> = stats
                .iter()
                .map(|s| {
                    json!({"name": s.pool, "ready": s.ready, "deployed": s.deployed,
                           "provisioning": s.provisioning})
                })
                .collect();
            out.push_str(&crate::output::to_python_json(&json!({ "pools": pools })));
            out.push('\n');
        }
        StatsFormat::Zabbix => {
            for s in stats {
                for (state, n) in [
                    ("ready", s.ready),
                    ("deployed", s.deployed),
                    ("provisioning", s.provisioning),
                ] {
                    out.push_str(&format!("- duffy.nodes.{state}.[{}] {n}\n", s.pool));
                }
            }
        }
        StatsFormat::ZabbixLld => {
            let items: Vec<String> = stats
                .iter()
                .map(|s| format!(" {{\"{{#DUFFY_POOL_NAME}}\": \"{}\"}}", s.pool))
                .collect();
            out.push_str(&format!(
                "- duffy.lld.pools {{ \"data\": [{} ] }}\n",
                items.join(",")
            ));
        }
    }
    out
}

pub async fn run(a: StatsArgs, cfg: &Config) -> CliResult {
    let exclude = match &a.exclude {
        Some(re) => Some(Regex::new(re).map_err(|e| {
            // regex's message is a multi-line picture; its last line says what is wrong
            let e = e.to_string();
            let why = e.lines().last().unwrap_or("").trim_start_matches("error: ");
            CliError::Usage(format!(
                "--exclude: invalid regular expression {re:?}: {why}"
            ))
        })?),
        None => None,
    };
    let dbh = super::connect(cfg, 1).await?;
    let c = dbh.get().await?;
    let mut stats = pools::stats(&**c).await?;
    if let Some(re) = exclude {
        stats.retain(|s| !re.is_match(&s.pool));
    }
    print!("{}", render(&stats, a.format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<PoolStats> {
        vec![
            PoolStats {
                pool: "metal-ec2-c5n-centos-10s-x86_64".into(),
                ready: 3,
                deployed: 1,
                provisioning: 0,
            },
            PoolStats {
                pool: "virt-ec2-t2-centos-9s-x86_64".into(),
                ready: 8,
                deployed: 0,
                provisioning: 2,
            },
        ]
    }

    #[test]
    fn upstream_script_formats() {
        assert_eq!(
            render(&sample(), StatsFormat::Text),
            "[+] Duffy Pool status : Ready | Deployed | Provisioning : \n\
             [metal-ec2-c5n-centos-10s-x86_64]: 3 | 1 | 0\n\
             [virt-ec2-t2-centos-9s-x86_64]: 8 | 0 | 2\n"
        );
        assert_eq!(
            render(&sample(), StatsFormat::ZabbixLld),
            "- duffy.lld.pools { \"data\": [ {\"{#DUFFY_POOL_NAME}\": \"metal-ec2-c5n-centos-10s-x86_64\"}, \
             {\"{#DUFFY_POOL_NAME}\": \"virt-ec2-t2-centos-9s-x86_64\"} ] }\n"
        );
        assert_eq!(
            render(&[], StatsFormat::ZabbixLld),
            "- duffy.lld.pools { \"data\": [ ] }\n"
        );
        let z = render(&sample(), StatsFormat::Zabbix);
        assert_eq!(z.lines().count(), 6);
        assert!(z.contains("- duffy.nodes.provisioning.[virt-ec2-t2-centos-9s-x86_64] 2\n"));
    }
}
