//! Masking of secrets in a config before it is shown (`duffy config check/dump`, logs).
//! Masked: passwords inside URLs, values of keys that name a secret (`*password*`, `*secret*`,
//! `*token*`, `key`, `*_key`, `api_key`…) and the keys of `metaclient.usermap` (legacy API keys).

use serde_yaml::{Mapping, Value};

use super::merge::key_text;

pub const MASK: &str = "**********";

fn is_secret_key(k: &str) -> bool {
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

/// `scheme://user:pw@host` → `scheme://user:**********@host`.
pub fn mask_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    if let Some(at) = authority.rfind('@') {
        let userinfo = &authority[..at];
        if let Some(colon) = userinfo.find(':') {
            return format!(
                "{}{}:{}{}",
                &s[..scheme_end + 3],
                &userinfo[..colon],
                MASK,
                &rest[at..]
            );
        }
    }
    s.to_string()
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
