//! Where a playbook run's private files live: `vars.json` (the pool's extra vars, which may hold
//! cloud keys or BMC passwords), the inventory, the `duffy_out` callback and its output file.
//!
//! Layout under the scheduler's state directory (`scheduler.state-dir`, see
//! [`crate::config::SchedulerConfig::state_dir`]):
//!
//! ```text
//! <state-dir>/runs/                    0700, root of every scheduler process on this machine
//! <state-dir>/runs/<pid>-<id>/         0700, one per scheduler process, flock'ed on .lock
//! <state-dir>/runs/<pid>-<id>/<uuid>/  0700, one per playbook run, files 0600
//! ```
//!
//! A run's directory is removed when the run ends on every path (success, failure, timeout,
//! the job's task aborted on SIGTERM) by [`RunDir`]'s drop. A scheduler killed with SIGKILL
//! cannot remove its own: its process directory's `flock` goes with the process, so the next
//! scheduler that starts on this machine sweeps every process directory whose lock it can take
//! (its owner is dead) — never one of a scheduler that is still running.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A scheduler process's run directories (held for the process's lifetime).
#[derive(Debug)]
pub struct RunDirs {
    own: PathBuf,
    /// the exclusive flock on `own/.lock` that marks the directory as alive
    _lock: File,
    /// process directories of dead schedulers removed at start
    pub swept: usize,
}

/// Create `dir` (and missing parents) with `mode`, and set `mode` on `dir` if it existed.
pub fn private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Write `bytes` to a new file `path` created with `mode` (never readable by others between
/// creation and a later chmod).
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)
}

/// Try to take the exclusive lock of `f` without waiting.
fn try_lock(f: &File) -> bool {
    // SAFETY: plain syscall on a descriptor we own
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl RunDirs {
    /// Make this process's run directory under `state_dir/runs` and sweep those of dead
    /// schedulers.
    pub fn open(state_dir: &Path) -> std::io::Result<RunDirs> {
        let root = state_dir.join("runs");
        private_dir(&root, 0o700)?;
        let own = root.join(format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&own)?;
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(own.join(".lock"))?;
        if !try_lock(&lock) {
            return Err(std::io::Error::other(format!(
                "cannot lock {}",
                own.join(".lock").display()
            )));
        }
        let mut swept = 0;
        for e in std::fs::read_dir(&root)?.flatten() {
            let p = e.path();
            if p == own || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // alive while its owner holds the lock; no lock file: died before it made one, or
            // is making it right now (so only once the directory is a minute old)
            let dead = match File::open(p.join(".lock")) {
                Ok(f) => try_lock(&f),
                Err(_) => e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(60)),
            };
            if dead && std::fs::remove_dir_all(&p).is_ok() {
                swept += 1;
            }
        }
        Ok(RunDirs {
            own,
            _lock: lock,
            swept,
        })
    }

    /// A new private directory for one playbook run.
    pub fn new_run(&self) -> std::io::Result<RunDir> {
        let dir = self.own.join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.own);
    }
}

/// One run's private directory, removed on drop.
#[derive(Debug)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn private_modes_and_removal() {
        let t = tempfile::tempdir().unwrap();
        let runs = RunDirs::open(t.path()).unwrap();
        assert_eq!(mode(&t.path().join("runs")), 0o700);
        let r = runs.new_run().unwrap();
        assert_eq!(mode(r.path()), 0o700);
        write_private(&r.path().join("vars.json"), b"{}", 0o600).unwrap();
        assert_eq!(mode(&r.path().join("vars.json")), 0o600);
        let p = r.path().to_path_buf();
        drop(r);
        assert!(!p.exists());
        let own = runs.own.clone();
        drop(runs);
        assert!(!own.exists());
    }

    #[test]
    fn sweeps_dead_owners_only() {
        let t = tempfile::tempdir().unwrap();
        // a dead scheduler's directory (no lock held) with a run left in it, and one that died
        // before it made its lock file
        let dead = t.path().join("runs/1-dead");
        std::fs::create_dir_all(dead.join("run1")).unwrap();
        std::fs::write(dead.join(".lock"), "").unwrap();
        std::fs::write(dead.join("run1/vars.json"), "secret").unwrap();
        let nolock = t.path().join("runs/2-nolock");
        std::fs::create_dir_all(&nolock).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        File::open(&nolock).unwrap().set_modified(old).unwrap();
        // one being made right now (no lock file yet, young): left alone
        let young = t.path().join("runs/3-young");
        std::fs::create_dir_all(&young).unwrap();
        // a live one (this process holds its lock)
        let live = RunDirs::open(t.path()).unwrap();
        assert_eq!(live.swept, 2);
        assert!(!nolock.exists());
        assert!(young.exists());
        let r = live.new_run().unwrap();
        assert!(!dead.exists());
        let other = RunDirs::open(t.path()).unwrap();
        assert_eq!(
            other.swept, 0,
            "a live scheduler's directory is never swept"
        );
        assert!(r.path().exists());
    }
}
