//! Masking of secrets in a config before it is shown (`duffy config check/dump`, logs).
//! Masked: passwords inside URLs, values of keys that name a secret (`*password*`, `*secret*`,
//! `*token*`, `key`, `*_key`, `api_key`…) and the keys of `metaclient.usermap` (legacy API keys).
//! Passwords in URLs are masked in the userinfo part and in `password=` parameters (URL query or
//! libpq keyword strings such as `host=db password=…`), wherever such a string appears.

use serde_yaml::{Mapping, Value};

use super::merge::key_text;

pub const MASK: &str = "**********";

/// Does a key's name say that its value is a secret?
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password")
        || k.contains("passwd")
        || k.contains("secret")
        || k.contains("token")
        || k == "key"
        || k.ends_with("_key")
        || k.ends_with("-key")
        || k.ends_with("apikey")
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
                } else if is_secret_key(&kt) && !v.is_mapping() && !v.is_null() {
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
}
