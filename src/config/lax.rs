//! Upstream's scalar coercions. Upstream validates its config with Pydantic 2 in lax mode, so
//! `port: "8080"`, `fill-level: 3.0` or `run-parallel: "yes"` pass its `duffy config check`;
//! and PyYAML reads YAML 1.1, where `yes`/`on`/`1_000` are a boolean and an integer, while
//! serde_yaml (YAML 1.2) gives strings. duffy accepts every such value of upstream's own keys
//! by the same rules (`int`, `float`, `bool` below mirror Pydantic's lax conversions), and
//! rewrites them to their typed values before the typed model reads the sections.
//! duffy's own sections stay strict.

use serde_yaml::{Mapping, Value};

/// Pydantic's lax `int`: integers, booleans (1/0), floats without a fractional part, and
/// strings of those (surrounding whitespace, a sign, `_` between digits, a `.0…` tail).
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        }),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::String(s) => crate::lax::int_str(s),
        _ => None,
    }
}

/// Pydantic's lax `float`: numbers, booleans, numeric strings (`_` between digits allowed).
pub fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => crate::lax::float_str(s).filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Pydantic's lax `bool`: booleans, 0/1 (also as floats), and the strings
/// `1 0 true false t f yes no y n on off` in any case.
pub fn bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => crate::lax::bool_str(s),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Float,
}

/// The scalar keys of upstream's sections that its model types as numbers
/// (`duffy.configuration.validation`), as (section path, key, kind).
const NUMERIC: &[(&[&str], &str, Kind)] = &[
    (&["app"], "port", Kind::Int),
    (&["metaclient"], "port", Kind::Int),
    (&["defaults"], "node-quota", Kind::Int),
    (&["app", "retries"], "no-attempts", Kind::Int),
    (&["defaults", "retries"], "no-attempts", Kind::Int),
    (&["app", "retries"], "delay-min", Kind::Float),
    (&["app", "retries"], "delay-max", Kind::Float),
    (&["app", "retries"], "delay-backoff-factor", Kind::Float),
    (&["app", "retries"], "delay-add-fuzz", Kind::Float),
    (&["defaults", "retries"], "delay-min", Kind::Float),
    (&["defaults", "retries"], "delay-max", Kind::Float),
    (
        &["defaults", "retries"],
        "delay-backoff-factor",
        Kind::Float,
    ),
    (&["defaults", "retries"], "delay-add-fuzz", Kind::Float),
];

/// Rewrite upstream's numeric keys that Pydantic would coerce (`"8080"`, `10.0`, `true`) to
/// numbers. Values it would refuse are left alone for the typed model to report.
pub fn coerce_upstream(root: &mut Mapping) {
    for (section, key, kind) in NUMERIC {
        let Some(m) = section_mut(root, section) else {
            continue;
        };
        let Some(v) = m.get_mut(*key) else { continue };
        if matches!(v, Value::Number(n) if n.is_u64() || n.is_i64()) {
            continue;
        }
        let new = match kind {
            Kind::Int => int(v).map(Value::from),
            Kind::Float if matches!(v, Value::Number(_)) => None,
            Kind::Float => float(v).map(Value::from),
        };
        if let Some(new) = new {
            *v = new;
        }
    }
}

fn section_mut<'a>(root: &'a mut Mapping, path: &[&str]) -> Option<&'a mut Mapping> {
    let mut m = root;
    for s in path {
        match m.get_mut(*s) {
            Some(Value::Mapping(x)) => m = x,
            _ => return None,
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    /// The expectations are Pydantic 2's answers (upstream's venv,
    /// `TypeAdapter(int|float|bool).validate_python`).
    #[test]
    fn pydantic_lax_rules() {
        for (v, want) in [
            ("'10'", Some(10)),
            ("' 10 '", Some(10)),
            ("'10.0'", Some(10)),
            ("'+5'", Some(5)),
            ("'-5'", Some(-5)),
            ("'1_000'", Some(1000)),
            ("1_000", Some(1000)),
            ("10.0", Some(10)),
            ("true", Some(1)),
            ("false", Some(0)),
            ("'1e1'", None),
            ("'0x10'", None),
            ("10.5", None),
            ("'abc'", None),
            ("''", None),
            ("'1__0'", None),
            ("'1.'", None),
            ("'1_0.0'", Some(10)),
            ("null", None),
        ] {
            assert_eq!(int(&y(v)), want, "int {v}");
        }
        for (v, want) in [
            ("'10'", Some(10.0)),
            ("'1e1'", Some(10.0)),
            ("'0.1'", Some(0.1)),
            ("'1_000'", Some(1000.0)),
            ("true", Some(1.0)),
            ("'0x10'", None),
            ("''", None),
        ] {
            assert_eq!(float(&y(v)), want, "float {v}");
        }
        for (v, want) in [
            ("yes", Some(true)),
            ("'YES'", Some(true)),
            ("on", Some(true)),
            ("off", Some(false)),
            ("y", Some(true)),
            ("n", Some(false)),
            ("t", Some(true)),
            ("f", Some(false)),
            ("'1'", Some(true)),
            ("'0'", Some(false)),
            ("1", Some(true)),
            ("0", Some(false)),
            ("1.0", Some(true)),
            ("2", None),
            ("'2'", None),
            ("''", None),
        ] {
            assert_eq!(bool(&y(v)), want, "bool {v}");
        }
    }

    #[test]
    fn coerces_only_upstream_numeric_keys() {
        let mut m: Mapping = serde_yaml::from_str(
            "app: {port: '8080', retries: {no-attempts: '5', delay-min: '0.1'}}\n\
             defaults: {node-quota: 10.0}\nmetaclient: {port: nope}\nscheduler: {max-jobs: '3'}\n",
        )
        .unwrap();
        coerce_upstream(&mut m);
        let want: Mapping = serde_yaml::from_str(
            "app: {port: 8080, retries: {no-attempts: 5, delay-min: 0.1}}\n\
             defaults: {node-quota: 10}\nmetaclient: {port: nope}\nscheduler: {max-jobs: '3'}\n",
        )
        .unwrap();
        assert_eq!(m, want);
    }
}
