//! Where configuration comes from, identical for every binary:
//! `-c/--config FILE|DIR` (repeatable) → else `$DUFFY_CONFIG` (file or dir; several joined by `:`)
//! → else `/etc/duffy` then `$XDG_CONFIG_HOME/duffy` (`~/.config/duffy`), each only if present.
//! A directory contributes its `*.yaml`/`*.yml` files in name order; a file is read as is.

use std::path::{Path, PathBuf};

use super::{ConfigError, ENV_CONFIG};

/// The system-wide default location.
pub const SYSTEM_DIR: &str = "/etc/duffy";

/// The per-user default location: `$XDG_CONFIG_HOME/duffy` or `~/.config/duffy`.
pub fn user_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("duffy"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("duffy"))
}

/// Decide which paths to read. Explicit and `$DUFFY_CONFIG` paths must exist; defaults may not.
pub fn resolve(explicit: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let given: Vec<PathBuf> = if !explicit.is_empty() {
        explicit.to_vec()
    } else if let Some(env) = std::env::var_os(ENV_CONFIG).filter(|e| !e.is_empty()) {
        std::env::split_paths(&env)
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    } else {
        let mut v = vec![PathBuf::from(SYSTEM_DIR)];
        v.extend(user_path());
        return Ok(v.into_iter().filter(|p| p.exists()).collect());
    };
    for p in &given {
        if !p.exists() {
            return Err(ConfigError::NotFound(p.clone()));
        }
    }
    Ok(given)
}

fn is_yaml(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

/// Turn paths into the ordered list of files to read.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound(p.clone())
            } else {
                ConfigError::Io {
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        if meta.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| ConfigError::Io {
                path: p.clone(),
                source,
            })?;
            let mut inner: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| is_yaml(f) && f.is_file())
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}
