//! Output documents in upstream `duffy client`'s formats (compat spec §6.4):
//! `json` (Python `json.dumps`: one line for `duffy admin`, `indent=4` for `duffy client`;
//! non-ASCII escaped, key order kept, Python float repr),
//! `yaml` (PyYAML's `yaml.dump`: [`pyyaml`]) and `flat` (`key=value` pairs, shell-quoted
//! strings, `TRUE`/`FALSE`, nested keys joined with `_`). [`client`] has upstream `duffy
//! client`'s documents built from these; `duffy admin` prints the generic ones below.

pub mod client;
pub mod pyyaml;

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

/// serde_json formatter reproducing Python's `json.dumps(obj)` (one line: `", "`, `": "`) and
/// `json.dumps(obj, indent=4)` (`","` at line ends, four-space indents, `": "`), both with
/// `ensure_ascii` (everything outside `' '..='~'` as `\uXXXX`) and Python's float repr.
struct PythonJson {
    pretty: bool,
    depth: usize,
    has_value: bool,
}

impl PythonJson {
    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.depth {
            w.write_all(b"    ")?;
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        if self.pretty && self.has_value {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }

    fn item<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match (self.pretty, first) {
            (false, true) => Ok(()),
            (false, false) => w.write_all(b", "),
            (true, first) => {
                if !first {
                    w.write_all(b",")?;
                }
                self.newline(w)
            }
        }
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn write_f64<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(python_float(value).as_bytes())
    }
    fn write_f32<W: ?Sized + io::Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(w, value as f64)
    }
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.item(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
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

fn python_json<T: Serialize>(v: &T, pretty: bool) -> String {
    let mut out = Vec::new();
    let fmt = PythonJson {
        pretty,
        depth: 0,
        has_value: false,
    };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("serialising to memory");
    String::from_utf8(out).expect("ascii output")
}

/// One-line JSON like Python's `json.dumps(v)`.
pub fn to_python_json<T: Serialize>(v: &T) -> String {
    python_json(v, false)
}

/// Python's `json.dumps(v, indent=4)` (no final newline).
pub fn to_python_json_indented<T: Serialize>(v: &T) -> String {
    python_json(v, true)
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{:e}", f); // e.g. "-1.5e-7", "2.16e4"
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("exponent");
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                format!("{digits}{}.0", "0".repeat((int_len - n) as usize))
            } else {
                format!(
                    "{}.{}",
                    &digits[..int_len as usize],
                    &digits[int_len as usize..]
                )
            }
        } else {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { "-" } else { "+" };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// PyYAML's `yaml.dump` (block style, keys sorted), followed by an empty line.
pub fn to_yaml(v: &Value) -> String {
    let mut s = pyyaml::dump(v);
    s.push('\n');
    s
}

/// POSIX shell single-quoting, always quoted: `'it'"'"'s'`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\"'\"'"))
}

/// `str()` of a JSON number as Python's `json.loads` would have typed it.
fn python_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        python_float(n.as_f64().unwrap_or(0.0))
    } else {
        n.to_string()
    }
}

/// One flat value (upstream's `DuffyFlatFormatter.format_key_value`).
pub fn flat_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(true) => "TRUE".into(),
        Value::Bool(false) => "FALSE".into(),
        Value::Number(n) => python_number(n),
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
