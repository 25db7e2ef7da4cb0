//! Upstream's deep-merge rule (compat spec §7.1), shared by file merging and pool inheritance:
//! mappings merge recursively, a later scalar or list replaces an earlier value, and replacing a
//! mapping by a non-mapping (or the reverse) is an error. Key order is kept (first appearance).

use serde_yaml::{Mapping, Value};

/// Human name of a YAML value's type, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Text of a mapping key (`nodepools`, `70`, …) for key paths.
pub fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Merge `over` into `base`. `on_set` is called with the key path of every key written.
/// Errors are `(key path, message)`.
pub fn deep_merge(
    base: &mut Mapping,
    over: Mapping,
    prefix: &str,
    on_set: &mut dyn FnMut(&str),
) -> Result<(), (String, String)> {
    for (k, v) in over {
        let path = join(prefix, &key_text(&k));
        match (base.get_mut(&k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => {
                on_set(&path);
                deep_merge(b, o, &path, on_set)?;
            }
            (Some(old @ Value::Mapping(_)), new) => {
                return Err((
                    path,
                    format!(
                        "cannot replace {} with {} when merging",
                        kind(old),
                        kind(&new)
                    ),
                ));
            }
            (Some(old), new @ Value::Mapping(_)) => {
                return Err((
                    path,
                    format!(
                        "cannot replace {} with {} when merging",
                        kind(old),
                        kind(&new)
                    ),
                ));
            }
            (Some(old), new) => {
                on_set(&path);
                *old = new;
            }
            (None, new) => {
                mark_all(&new, &path, on_set);
                base.insert(k, new);
            }
        }
    }
    Ok(())
}

fn mark_all(v: &Value, path: &str, on_set: &mut dyn FnMut(&str)) {
    on_set(path);
    if let Value::Mapping(m) = v {
        for (k, v) in m {
            mark_all(v, &join(path, &key_text(k)), on_set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(s: &str) -> Mapping {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn merges_recursively_and_keeps_order() {
        let mut base = map("a: {x: 1, y: 2}\nb: [1]\nc: z");
        deep_merge(
            &mut base,
            map("a: {y: 3, z: 4}\nb: [2]\nd: 1"),
            "",
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            serde_yaml::to_string(&base).unwrap(),
            "a:\n  x: 1\n  y: 3\n  z: 4\nb:\n- 2\nc: z\nd: 1\n"
        );
    }

    #[test]
    fn dict_vs_scalar_is_an_error() {
        let mut base = map("a: {x: 1}");
        let err = deep_merge(&mut base, map("a: 5"), "", &mut |_| {}).unwrap_err();
        assert_eq!(err.0, "a");
        let mut base = map("a: {x: 1}");
        let err = deep_merge(&mut base, map("a: {x: {y: 1}}"), "", &mut |_| {}).unwrap_err();
        assert_eq!(err.0, "a.x");
        let mut base = map("a: {x: 1}");
        assert!(deep_merge(&mut base, map("a: ~"), "", &mut |_| {}).is_err());
    }
}
