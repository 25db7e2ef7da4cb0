//! Masking of secrets in a config before it is shown (`duffy config check/dump`, logs).
//! Masked: passwords inside URLs, the whole value of every key that names a secret by the one
//! rule ([`crate::secrets::is_secret_key`]: `*password*`, `*secret*`, `*token*`, `*private*`,
//! `key`, `*_key`, `api_key`…; mappings and lists under such a key too) and the keys of
//! `metaclient.usermap` (legacy API keys). Not masked: `inventory.attributes.*.pool-key` and
//! `data-key`, which duffy's schema defines as *names* of keys. Passwords in URLs are masked in
//! the userinfo part and in `password=` parameters (URL query or libpq keyword strings such as
//! `host=db password=…`), wherever such a string appears.

use serde_yaml::{Mapping, Value};

use super::merge::key_text;
use crate::secrets::is_secret_key;

pub use crate::secrets::MASK;

/// Does the config key `key` under `parent` (a dotted key path, `""` at the top) hold a
/// secret? The one rule on the key's name, except for the keys the schema defines as names of
/// other keys; the keys of `metaclient.usermap` are secrets themselves.
pub fn is_secret_entry(parent: &str, key: &str) -> bool {
    if parent == "metaclient.usermap" {
        return true;
    }
    if parent.starts_with("inventory.attributes.") && matches!(key, "pool-key" | "data-key") {
        return false;
    }
    is_secret_key(key)
}

/// Is the value at a key path of an error message (`a.b[2].c`) a secret or inside one?
pub fn is_secret_path(path: &str) -> bool {
    let mut start = 0;
    while start <= path.len() {
        let end = path[start..].find('.').map_or(path.len(), |i| start + i);
        let seg = &path[start..end];
        let key = seg.find('[').map_or(seg, |i| &seg[..i]);
        let parent = path[..start].strip_suffix('.').unwrap_or("");
        if !key.is_empty() && is_secret_entry(parent, key) {
            return true;
        }
        start = end + 1;
    }
    false
}

/// Mask the passwords of a connection string: `scheme://user:pw@host` →
/// `scheme://user:**********@host`, and the value of every `password=` parameter
/// (`?password=…`, libpq's `host=db password=…`).
pub fn mask_url(s: &str) -> String {
    mask_password_params(&mask_userinfo(s))
}

fn mask_userinfo(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    // The credentials end at the last `@` before the query: an unencoded `/` or `@` in a
    // password must not let the password through (libpq-style parsers take up to the `@`).
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..query].rfind('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) if !userinfo[..colon].contains('/') => format!(
            "{}{}:{}{}",
            &s[..scheme_end + 3],
            &userinfo[..colon],
            MASK,
            &rest[at..]
        ),
        _ => s.to_string(),
    }
}

fn mask_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(KEY) {
        let start = pos + found + KEY.len();
        out.push_str(&s[pos..start]);
        let value = &s[start..];
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // libpq: 'quoted value' with \' and \\ escapes
            let mut escaped = false;
            let mut end = value.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 2;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else {
            value
                .find(|c: char| c.is_whitespace() || c == '&' || c == '#' || c == ';')
                .unwrap_or(value.len())
        };
        if len > 0 {
            out.push_str(MASK);
        }
        pos = start + len;
    }
    out.push_str(&s[pos..]);
    out
}

/// Replace the values serde quotes in its messages (`` `…` `` and `"…"`) by [`MASK`].
pub fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in msg.chars() {
        match open {
            Some(q) if c == q => {
                out.push_str(MASK);
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '`' || c == '"' {
                    open = Some(c);
                }
            }
        }
    }
    out
}

fn walk(v: &Value, path: &str) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (i, (k, v)) in m.iter().enumerate() {
                let kt = key_text(k);
                let p = super::merge::join(path, &kt);
                if path == "metaclient.usermap" {
                    out.insert(Value::from(format!("{MASK}{}", i + 1)), walk(v, &p));
                } else if !v.is_null() && is_secret_entry(path, &kt) {
                    out.insert(k.clone(), Value::from(MASK));
                } else {
                    out.insert(k.clone(), walk(v, &p));
                }
            }
            Value::Mapping(out)
        }
        Value::Sequence(s) => Value::Sequence(s.iter().map(|x| walk(x, path)).collect()),
        Value::String(s) => Value::String(mask_url(s)),
        other => other.clone(),
    }
}

/// A copy of `v` with every secret replaced by [`MASK`].
pub fn mask(v: &Value) -> Value {
    walk(v, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_urls_and_keys() {
        assert_eq!(
            mask_url("postgresql+psycopg://duffy:s3cr%40t@db:5432/duffy"),
            "postgresql+psycopg://duffy:**********@db:5432/duffy"
        );
        assert_eq!(mask_url("redis://localhost:6379"), "redis://localhost:6379");
        let v: Value = serde_yaml::from_str(
            "client: {auth: {name: t, key: 8e06b6e1-fb32-4348-9342-9509e7507a1e}}\n\
             metaclient: {usermap: {8e06b6e1-fb32-4348-9342-9509e7507a1e: t}}\n\
             nodepools: {abstract: {v: {mechanism: {ansible: {extra-vars: {api_password: hunter2, api_username: u}}}}}}",
        )
        .unwrap();
        let out = serde_yaml::to_string(&mask(&v)).unwrap();
        assert!(!out.contains("8e06b6e1"), "{out}");
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains("api_username: u"), "{out}");
        assert!(out.contains("name: t"), "{out}");
    }

    #[test]
    fn secret_paths_follow_the_one_rule_with_the_schema_exceptions() {
        for (path, secret) in [
            ("client.auth.key", true),
            ("ipmi.credentials.bmc.password", true),
            (
                "nodepools.abstract.v.mechanism.ansible.extra-vars.secrets.db",
                true,
            ),
            (
                "nodepools.abstract.v.mechanism.ansible.extra-vars.tokens[1]",
                true,
            ),
            ("metaclient.usermap.8e06b6e1", true),
            ("inventory.attributes.arch.pool-key", false),
            ("inventory.attributes.arch.data-key", false),
            ("nodepools.concrete.p.extra-vars.data-key", true),
            ("ipmi.credentials.bmc.user", false),
            ("app.port", false),
            ("", false),
        ] {
            assert_eq!(is_secret_path(path), secret, "{path}");
        }
    }
}
