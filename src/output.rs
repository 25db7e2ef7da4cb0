//! Output documents in upstream `duffy client`'s formats (compat spec §6.4):
//! `json` (one line, Python `json.dumps` separators, non-ASCII escaped, key order kept),
//! `yaml` (block style, keys sorted, followed by an empty line) and `flat` (`key=value` pairs,
//! shell-quoted strings, `TRUE`/`FALSE`, nested keys joined with `_`).

use std::io;

use serde::Serialize;
use serde_json::Value;

/// Output format of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// upstream's `duffy admin` text (`OK: …`)
    #[default]
    Text,
    Json,
    Yaml,
    Flat,
}

/// serde_json formatter reproducing Python's `json.dumps(obj)` (ensure_ascii, `", "`, `": "`).
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// One-line JSON like Python's `json.dumps`.
pub fn to_python_json<T: Serialize>(v: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    v.serialize(&mut ser).expect("serialising to memory");
    String::from_utf8(out).expect("ascii output")
}

fn sorted(v: &Value) -> serde_yaml::Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = serde_yaml::Mapping::new();
            for k in keys {
                out.insert(serde_yaml::Value::from(k.clone()), sorted(&m[k]));
            }
            serde_yaml::Value::Mapping(out)
        }
        Value::Array(a) => serde_yaml::Value::Sequence(a.iter().map(sorted).collect()),
        other => serde_yaml::to_value(other).unwrap_or(serde_yaml::Value::Null),
    }
}

/// Block YAML with sorted keys, followed by an empty line.
pub fn to_yaml(v: &Value) -> String {
    let mut s = serde_yaml::to_string(&sorted(v)).unwrap_or_default();
    s.push('\n');
    s
}

/// POSIX shell single-quoting, always quoted: `'it'"'"'s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// One flat value.
pub fn flat_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(true) => "TRUE".into(),
        Value::Bool(false) => "FALSE".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => shell_quote(s),
        other => shell_quote(&other.to_string()),
    }
}

fn flatten_into(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}_{k}")
                };
                flatten_into(&key, v, out);
            }
        }
        other => out.push(format!("{prefix}={}", flat_value(other))),
    }
}

/// `key=value …` of an object (nested objects flattened with `_`).
pub fn flat_line(v: &Value) -> String {
    let mut parts = Vec::new();
    flatten_into("", v, &mut parts);
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_json() {
        let v = json!({"action": "get", "pools": [{"name": "p", "fill-level": 5}], "x": "é"});
        assert_eq!(
            to_python_json(&v),
            r#"{"action": "get", "pools": [{"name": "p", "fill-level": 5}], "x": "\u00e9"}"#
        );
    }

    #[test]
    fn yaml_sorted() {
        let v = json!({"b": 1, "a": {"d": null, "c": true}});
        assert_eq!(to_yaml(&v), "a:\n  c: true\n  d: null\nb: 1\n\n");
    }

    #[test]
    fn flat() {
        let v = json!({"name": "it's", "ok": true, "n": 3, "none": null, "levels": {"ready": 1}});
        assert_eq!(
            flat_line(&v),
            "name='it'\"'\"'s' ok=TRUE n=3 none= levels_ready=1"
        );
    }
}
