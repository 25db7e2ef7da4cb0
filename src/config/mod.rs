//! The one configuration model of every duffy binary (CLI, server, scheduler, modules, inventory).
//!
//! Reads upstream Duffy's YAML (`app`, `database`, `defaults`, `nodepools`, `metaclient`, `tasks`,
//! `client`) plus duffy's own sections (`scheduler`, `inventory`, `ipmi`, `events`), from the same
//! lookup everywhere ([`sources`]), deep-merged ([`merge`]), then validated into typed structs.
//! Every validation error names the file, the key path and what was expected ([`ConfigError`]).
//!
//! This module knows nothing about PostgreSQL or HTTP; it only turns files into a [`Config`].

mod lax;
mod merge;
mod model;
mod pools;
pub mod secrets;
pub mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use thiserror::Error;

pub use model::*;
pub use pools::{Contextualize, Mechanism, Playbook, Pool, PoolKind};
pub use secrets::mask_url;

/// Environment variable naming a config file or directory (used when no `-c` is given).
pub const ENV_CONFIG: &str = "DUFFY_CONFIG";
/// Environment variable overriding the database URL of the config.
pub const ENV_DATABASE_URL: &str = "DUFFY_DATABASE_URL";

/// Why a configuration could not be loaded. `Display` is the one-line message users see.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}: no such config file or directory")]
    NotFound(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: invalid YAML: {msg}")]
    Yaml { file: String, msg: String },
    #[error("{file}: {key}: {msg}")]
    Invalid {
        file: String,
        key: String,
        msg: String,
    },
}

/// The merged YAML of all sources, with the file that last set each key path.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    pub value: Mapping,
    /// dotted key path → file that (last) set it
    provenance: BTreeMap<String, String>,
    /// every file read, in merge order
    pub files: Vec<PathBuf>,
    /// every source name merged (files and [`RawConfig::merge_str`] names), in merge order
    sources: Vec<String>,
}

impl RawConfig {
    /// The file responsible for `key` (longest known prefix), for error messages.
    pub fn file_of(&self, key: &str) -> String {
        let mut k = key.to_string();
        loop {
            if let Some(f) = self.provenance.get(&k) {
                return f.clone();
            }
            match k.rfind(['.', '[']) {
                Some(i) => k.truncate(i),
                None => break,
            }
        }
        // Not set anywhere (e.g. a required key that is missing): name every source.
        match self.sources.as_slice() {
            [] => "(no configuration file)".to_string(),
            all => all.join(", "),
        }
    }

    pub fn invalid(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file_of(key),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn note_source(&mut self, file: &str) {
        if !self.sources.iter().any(|s| s == file) {
            self.sources.push(file.to_string());
        }
    }

    /// Merge one YAML document (from `file`) on top of what is there.
    pub fn merge_document(&mut self, doc: Value, file: &str) -> Result<(), ConfigError> {
        self.merge_nth_document(doc, file, 1)
    }

    fn merge_nth_document(&mut self, doc: Value, file: &str, n: usize) -> Result<(), ConfigError> {
        self.note_source(file);
        let m = match doc {
            Value::Null => return Ok(()),
            Value::Mapping(m) => m,
            other => {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    key: format!("<document {n}>"),
                    msg: format!(
                        "expected a mapping at the top level, got {}",
                        merge::kind(&other)
                    ),
                })
            }
        };
        let provenance = &mut self.provenance;
        let merged = merge::deep_merge(&mut self.value, m, "", &mut |path| {
            provenance.insert(path.to_string(), file.to_string());
        });
        merged.map_err(|(key, msg)| {
            // The conflicting key itself was not re-marked: its provenance is the earlier file.
            let earlier = self.provenance.get(&key).filter(|f| f.as_str() != file);
            ConfigError::Invalid {
                file: file.to_string(),
                msg: match earlier {
                    Some(f) => format!("{msg} (the earlier value comes from {f})"),
                    None => msg,
                },
                key,
            }
        })
    }

    /// Read and merge every file (a directory contributes its `*.yaml`/`*.yml` in name order).
    pub fn load(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut raw = RawConfig::default();
        for file in sources::expand(paths)? {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Io {
                path: file.clone(),
                source,
            })?;
            raw.merge_str(&text, &file.display().to_string())?;
            raw.files.push(file);
        }
        Ok(raw)
    }

    /// Merge all YAML documents of `text` (named `file` in errors).
    pub fn merge_str(&mut self, text: &str, file: &str) -> Result<(), ConfigError> {
        use serde::Deserialize;
        self.note_source(file);
        let yaml_err = |e: serde_yaml::Error| ConfigError::Yaml {
            file: file.to_string(),
            msg: e.to_string(),
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let mut value = Value::deserialize(doc).map_err(yaml_err)?;
            // PyYAML (upstream) resolves `<<: *anchor` merge keys; serde_yaml needs asking.
            value.apply_merge().map_err(yaml_err)?;
            self.merge_nth_document(value, file, i + 1)?;
        }
        Ok(())
    }

    /// The merged config with secrets replaced by `**********`.
    pub fn masked(&self) -> Value {
        secrets::mask(&Value::Mapping(self.value.clone()))
    }
}

/// Load the configuration the way every duffy binary does: explicit paths (`-c`), else
/// `$DUFFY_CONFIG`, else `/etc/duffy` + `~/.config/duffy`; then `$DUFFY_DATABASE_URL`.
pub fn load(explicit: &[PathBuf]) -> Result<Config, ConfigError> {
    let paths = sources::resolve(explicit)?;
    let raw = RawConfig::load(&paths)?;
    Config::from_raw(raw)
}

/// Load from an explicit list of files/dirs only (no environment lookup except the DB URL).
pub fn load_from(paths: &[&Path]) -> Result<Config, ConfigError> {
    let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    Config::from_raw(RawConfig::load(&paths)?)
}

#[cfg(test)]
mod tests;
