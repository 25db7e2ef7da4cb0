//! Running a pool's provision/deprovision playbook (compat spec §8.3–8.5).
//!
//! `ansible-playbook -i <inventory> -e @<vars.json> <playbook>` in the mechanism's `topdir`, with
//! the templated extra vars (pool vars + `duffy_in`) in a JSON file. The inventory holds only
//! `localhost` the way ansible-runner's implicit localhost (upstream's runner) has it: local
//! connection, the controller's own Python — and nothing forces other hosts onto the local
//! connection, so playbooks that `add_host` new machines (EC2) reach them over SSH. The result is
//! the value of the last successful `set_fact` of `duffy_out` (short or FQCN action name), which
//! a small callback plugin shipped with duffy (`duffy_out.py`, written next to the run) saves to
//! `$DUFFY_OUT_FILE` — so upstream's playbooks work unchanged. The run is time-limited (the whole
//! process group is killed) and its output is kept in the job's log file. No database connection
//! or transaction is held while it runs (bug 8).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::rundir::{private_dir, write_private, RunDirs};
use crate::config::{Playbook, Pool};

const CALLBACK: &str = include_str!("duffy_out.py");

/// One playbook run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    pub ansible_playbook: &'a str,
    pub topdir: &'a Path,
    pub playbook: &'a str,
    pub extra_vars: &'a Json,
    pub timeout: Duration,
    /// where stdout and stderr go (masked: [`secrets`] of the extra vars)
    pub log_path: &'a Path,
    /// the scheduler's private run directories (vars, inventory, callback live there)
    pub runs: &'a RunDirs,
}

/// The secrets among `vars` (the run's extra vars, `duffy_in` included): what
/// [`crate::secrets::secret_values`] finds (every scalar under a secret-named key:
/// `bmc_password`, `aws_secret_key`, …), and each long line of a multi-line one (a private
/// key), so that the job log can mask them line by line.
pub fn secrets(vars: &Json) -> Vec<String> {
    let mut out = Vec::new();
    crate::secrets::secret_values(vars, &mut out);
    out.retain(|s| !s.is_empty());
    let lines: Vec<String> = out
        .iter()
        .filter(|s| s.contains('\n'))
        .flat_map(|s| s.lines().map(str::trim).filter(|l| l.len() >= 8))
        .map(str::to_string)
        .collect();
    out.extend(lines);
    // longest first: a secret that contains another is masked whole
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// Copy the playbook's output `from` into the job log line by line, secrets masked.
async fn copy_masked(
    from: impl tokio::io::AsyncRead + Unpin,
    log: Arc<std::sync::Mutex<std::fs::File>>,
    secrets: Arc<Vec<String>>,
) {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;
    let mut r = tokio::io::BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let masked = match std::str::from_utf8(&line) {
            Ok(text) => crate::ansible::mask_text(text, &secrets).into_bytes(),
            // not UTF-8: mask the secrets' bytes
            Err(_) => {
                let mut l = line.clone();
                for sec in secrets.iter() {
                    l = replace_bytes(&l, sec.as_bytes(), crate::secrets::ANSIBLE_MASK.as_bytes());
                }
                l
            }
        };
        // (a local file: a short blocking write)
        let written = log.lock().map(|mut f| f.write_all(&masked));
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
    }
}

fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    if needle.is_empty() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fn yaml_to_json(v: &serde_yaml::Value) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// Render every string of `v`, recursing into maps but not into lists (§8.3).
fn render_strings(v: &mut Json, ctx: &Json) -> Result<(), String> {
    match v {
        Json::String(s) => {
            if s.contains("{{") || s.contains("{%") || s.contains("{#") {
                *s = crate::jinja::render(s, ctx).map_err(|e| format!("{s:?}: {e}"))?;
            }
            Ok(())
        }
        Json::Object(m) => {
            for (_, x) in m.iter_mut() {
                render_strings(x, ctx)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The effective extra vars of `playbook` of `pool`: mechanism extra-vars ∪ playbook extra-vars
/// ∪ `{duffy_in}`, every string rendered with the pool's variables and `duffy_in`.
pub fn extra_vars(pool: &Pool, playbook: &Playbook, duffy_in: &Json) -> Result<Json, String> {
    let mech = pool.mechanism.as_ref().ok_or("pool has no mechanism")?;
    let mut vars = Map::new();
    for m in [&mech.extra_vars, &playbook.extra_vars] {
        if let Json::Object(o) = yaml_to_json(&serde_yaml::Value::Mapping(m.clone())) {
            vars.extend(o);
        }
    }
    vars.insert("duffy_in".into(), duffy_in.clone());
    let mut ctx = match yaml_to_json(&serde_yaml::Value::Mapping(pool.vars.clone())) {
        Json::Object(o) => o,
        _ => Map::new(),
    };
    ctx.insert("duffy_in".into(), duffy_in.clone());
    let ctx = Json::Object(ctx);
    let mut out = Json::Object(vars);
    render_strings(&mut out, &ctx).map_err(|e| format!("templating extra-vars: {e}"))?;
    Ok(out)
}

/// Send `sig` to a process group.
fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall; the group is the playbook's own (process_group(0) at spawn)
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// The last lines of the log that say what went wrong.
fn failure_summary(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("fatal:") || t.starts_with("ERROR") || t.starts_with("[ERROR]")
        })
        .collect();
    let lines = if lines.is_empty() {
        // e.g. `sh: …: not found`
        text.lines().rev().take(1).collect()
    } else {
        lines
    };
    let mut s = lines
        .iter()
        .rev()
        .take(2)
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Aborts the output copiers on drop.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// Sends SIGTERM to the playbook's process group on drop unless disarmed (`.0 = None`).
struct TermOnDrop(Option<u32>);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            signal_group(pid, libc::SIGTERM);
        }
    }
}

/// The run's inventory: ansible-runner's implicit localhost.
const INVENTORY: &str = "localhost ansible_connection=local ansible_python_interpreter=\"{{ ansible_playbook_python }}\"\n";

/// Run the playbook. `Ok(duffy_out)` if it ended successfully (`None`: it set no `duffy_out`),
/// `Err(reason)` otherwise (failed, timed out, could not start).
pub async fn run(r: &Run<'_>) -> Result<Option<Json>, String> {
    let dir = r
        .runs
        .new_run()
        .map_err(|e| format!("preparing the playbook run: {e}"))?;
    let setup = || -> std::io::Result<()> {
        let d = dir.path();
        private_dir(&d.join("callback_plugins"), 0o700)?;
        write_private(
            &d.join("callback_plugins/duffy_out.py"),
            CALLBACK.as_bytes(),
            0o600,
        )?;
        write_private(&d.join("inventory.ini"), INVENTORY.as_bytes(), 0o600)?;
        write_private(
            &d.join("vars.json"),
            &serde_json::to_vec(r.extra_vars).expect("json"),
            0o600,
        )?;
        if let Some(p) = r.log_path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(p)?;
        }
        Ok(())
    };
    setup().map_err(|e| format!("preparing the playbook run: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(r.log_path)
        .and_then(|f| {
            f.set_permissions(std::fs::Permissions::from_mode(0o640))?;
            Ok(f)
        })
        .map_err(|e| format!("creating {}: {e}", r.log_path.display()))?;
    let log = Arc::new(std::sync::Mutex::new(log));
    let secrets = Arc::new(secrets(r.extra_vars));
    let out_file = dir.path().join("duffy_out.json");
    // The playbook dies with the scheduler, SIGKILL included: the kernel sends ansible-playbook
    // SIGTERM when the scheduler dies (PR_SET_PDEATHSIG below), on which ansible terminates its
    // workers (they run in sessions of their own). So when the job is taken over after its lease
    // expires, the interrupted run is not still going on next to the new one. (Ansible can miss
    // a worker it is forking at that very instant; that worker ends after its current task.)
    let mut cmd = tokio::process::Command::new(r.ansible_playbook);
    cmd.current_dir(r.topdir)
        .arg("-i")
        .arg(dir.path().join("inventory.ini"))
        .arg("-e")
        .arg(format!("@{}", dir.path().join("vars.json").display()))
        .arg(r.playbook)
        .env(
            "ANSIBLE_CALLBACK_PLUGINS",
            dir.path().join("callback_plugins"),
        )
        .env("ANSIBLE_CALLBACKS_ENABLED", "duffy_out")
        .env("DUFFY_OUT_FILE", &out_file)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_LOCALHOST_WARNING", "0")
        .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "0")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // (The "parent" is the spawning thread: a tokio worker thread, which lives as long as the
    // runtime.) SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // the scheduler died before prctl took effect
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", r.ansible_playbook))?;
    let pid = child.id();
    // the job's task aborted (scheduler stopping): SIGTERM, so that ansible ends its workers
    let mut guard = TermOnDrop(pid);
    let copiers = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(copy_masked(o, log.clone(), secrets.clone()))),
        child
            .stderr
            .take()
            .map(|o| tokio::spawn(copy_masked(o, log.clone(), secrets.clone()))),
    ];
    // the output copied in full (a worker that outlived ansible-playbook may hold the pipe:
    // not waited for long), also when the job's task is aborted
    let _abort_copiers = AbortOnDrop(copiers.iter().flatten().map(|h| h.abort_handle()).collect());
    let flush = || async {
        for h in copiers.iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !h.is_finished() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        if let Ok(mut f) = log.lock() {
            use std::io::Write;
            let _ = f.flush();
        }
    };
    let status = match tokio::time::timeout(r.timeout, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("waiting for ansible-playbook: {e}")),
        Err(_) => {
            // SIGTERM first: ansible-playbook then terminates its workers' own sessions
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                if let Some(pid) = pid {
                    signal_group(pid, libc::SIGKILL);
                }
                let _ = child.wait().await;
            }
            guard.0 = None;
            flush().await;
            return Err(format!(
                "playbook {} timed out after {}s (output: {})",
                r.playbook,
                r.timeout.as_secs(),
                r.log_path.display()
            ));
        }
    };
    guard.0 = None;
    flush().await;
    if !status.success() {
        let summary = failure_summary(r.log_path);
        return Err(format!(
            "playbook {} failed ({status}){}{} (output: {})",
            r.playbook,
            if summary.is_empty() { "" } else { ": " },
            summary,
            r.log_path.display()
        ));
    }
    match std::fs::read(&out_file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("duffy_out of {} is not JSON: {e}", r.playbook)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading duffy_out: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolKind;

    fn pool(yaml: &str) -> Pool {
        let raw: serde_yaml::Mapping = serde_yaml::from_str(yaml).unwrap();
        Pool {
            name: "p".into(),
            kind: PoolKind::Concrete,
            vars: raw,
            fill_level: Some(1),
            reuse_nodes: None,
            run_parallel: true,
            mechanism: Some(crate::config::Mechanism {
                topdir: None,
                extra_vars: serde_yaml::from_str("{a: '{{ name }}-{{ architecture }}', n: {x: '{{ duffy_in.nodes | length }}'}, l: ['{{ name }}']}").unwrap(),
                provision: Some(Playbook {
                    playbook: "p.yml".into(),
                    extra_vars: serde_yaml::from_str("{b: '{{ type }}'}").unwrap(),
                }),
                deprovision: None,
                reconcile: None,
            }),
            contextualize: crate::config::Contextualize::None,
        }
    }

    #[test]
    fn secrets_are_the_secret_keys_values_and_their_long_lines() {
        let v = serde_json::json!({
            "bmc_password": "pw-1", "note": "not a secret", "empty_token": "",
            "duffy_in": {"nodes": [{"data": {"ipmi": {"password": 12345}}}]},
            "ssh_private_key": "-----BEGIN KEY-----\nAAAABBBBCCCC\nshort\n-----END KEY-----",
        });
        let s = secrets(&v);
        for want in [
            "pw-1",
            "12345",
            "AAAABBBBCCCC",
            "-----BEGIN KEY-----",
            "-----END KEY-----",
        ] {
            assert!(s.iter().any(|x| x == want), "{want} missing from {s:?}");
        }
        assert!(!s
            .iter()
            .any(|x| x == "not a secret" || x.is_empty() || x == "short"));
        assert!(
            s.windows(2).all(|w| w[0].len() >= w[1].len()),
            "longest first"
        );
    }

    #[test]
    fn extra_vars_are_templated_like_upstream() {
        let p = pool("{name: pool1, architecture: x86_64, type: virt, fill-level: 1}");
        let din = serde_json::json!({"nodes": [{"id": 1}, {"id": 2}, {"id": 3}]});
        let pb = p.mechanism.as_ref().unwrap().provision.clone().unwrap();
        let v = extra_vars(&p, &pb, &din).unwrap();
        assert_eq!(v["a"], "pool1-x86_64");
        assert_eq!(v["b"], "virt");
        assert_eq!(v["n"]["x"], "3");
        // lists are not recursed into
        assert_eq!(v["l"][0], "{{ name }}");
        assert_eq!(v["duffy_in"], din);
    }
}
