//! SSH contextualization (compat spec §9.5): put a tenant's public keys into root's
//! `authorized_keys` on nodes (below the marker `### DUFFY tenant credentials`), or take them out.
//!
//! Same remote commands and ssh options as upstream, but every node is handled concurrently and
//! each attempt has a time limit (upstream waits for ssh however long it takes).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::ContextualizeConfig;

pub const MARKER: &str = "### DUFFY tenant credentials";
const REMOTE_ADD: &str = "cat - >> ~root/.ssh/authorized_keys";
const REMOTE_REMOVE: &str =
    "sed -i -n '/### DUFFY tenant credentials/q;p' ~root/.ssh/authorized_keys";
const SSH_OPTIONS: [&str; 10] = [
    "CheckHostIP=no",
    "ConnectionAttempts=5",
    "EscapeChar=none",
    "ForwardAgent=no",
    "ForwardX11=no",
    "PasswordAuthentication=no",
    "PubkeyAuthentication=yes",
    "RequestTTY=no",
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
];

/// Why one node could not be (de)contextualized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    pub ipaddr: String,
    pub reason: String,
}

async fn remote(
    cfg: &ContextualizeConfig,
    ipaddr: &str,
    cmd: &str,
    stdin: Option<&str>,
) -> Result<(), String> {
    let mut c = Command::new(&cfg.ssh);
    c.arg("-q");
    for o in SSH_OPTIONS {
        c.arg("-o").arg(o);
    }
    c.arg("-o")
        .arg(format!("ConnectTimeout={}", cfg.timeout.0.as_secs().max(1)));
    if let Some(id) = &cfg.identity {
        c.arg("-i").arg(id).arg("-o").arg("IdentitiesOnly=yes");
    }
    c.args(&cfg.ssh_options);
    c.arg(format!("root@{ipaddr}")).arg(cmd);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let run = async {
        let mut child = c
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", cfg.ssh))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .await
                .map_err(|e| format!("ssh stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("ssh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            Err(format!(
                "ssh root@{ipaddr} exited with {}{}",
                out.status
                    .code()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "a signal".into()),
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))
        }
    };
    match tokio::time::timeout(cfg.timeout.0 + Duration::from_secs(1), run).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "ssh root@{ipaddr} timed out after {:?}",
            cfg.timeout.0
        )),
    }
}

/// Install `ssh_key` on every node (concurrently). Returns the failures.
pub async fn install(
    cfg: &ContextualizeConfig,
    ipaddrs: &[String],
    ssh_key: &str,
) -> Vec<NodeFailure> {
    let text = format!("{MARKER}\n{ssh_key}\n");
    let jobs = ipaddrs.iter().map(|ip| {
        let text = text.clone();
        async move {
            let r = match remote(cfg, ip, REMOTE_REMOVE, None).await {
                Ok(()) => remote(cfg, ip, REMOTE_ADD, Some(&text)).await,
                Err(e) => Err(e),
            };
            r.err().map(|reason| NodeFailure {
                ipaddr: ip.clone(),
                reason,
            })
        }
    });
    futures_util::future::join_all(jobs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Remove tenant keys from every node (concurrently). Returns the failures.
pub async fn remove(cfg: &ContextualizeConfig, ipaddrs: &[String]) -> Vec<NodeFailure> {
    let jobs = ipaddrs.iter().map(|ip| async move {
        remote(cfg, ip, REMOTE_REMOVE, None)
            .await
            .err()
            .map(|reason| NodeFailure {
                ipaddr: ip.clone(),
                reason,
            })
    });
    futures_util::future::join_all(jobs)
        .await
        .into_iter()
        .flatten()
        .collect()
}
