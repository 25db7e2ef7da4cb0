//! Argument specs and their validation — what `AnsibleModule(argument_spec=…)` does for Python
//! modules and what Ansible does *not* do for binary modules (it passes every option through
//! unchecked, `../shared/spec/ansible-binary-modules.md` §1.2).
//!
//! Order of the checks follows AnsibleModule: unknown options, mutually exclusive options,
//! required options, types (with Ansible's coercions: free-form `k=v` arguments always arrive as
//! strings, so `"5"` is an int and `"yes"` a bool), choices, defaults, then `required_if` /
//! `required_together` / `required_one_of`. Every problem is collected; the module fails once
//! with all of them.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Map, Number, Value};

/// An option's type (Ansible's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Str,
    Int,
    Bool,
    List,
    Dict,
    /// a string; `~` and `$VARS` expanded like Ansible's `path` type
    Path,
    /// anything, passed through
    Raw,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Str => "str",
            Type::Int => "int",
            Type::Bool => "bool",
            Type::List => "list",
            Type::Dict => "dict",
            Type::Path => "path",
            Type::Raw => "raw",
        }
    }
}

/// A default value (const-constructible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dflt {
    Str(&'static str),
    Int(i64),
    Bool(bool),
}

impl Dflt {
    fn value(self) -> Value {
        match self {
            Dflt::Str(s) => Value::from(s),
            Dflt::Int(i) => Value::from(i),
            Dflt::Bool(b) => Value::from(b),
        }
    }
}

/// How a secret option is masked in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// not a secret
    No,
    /// the whole value (`no_log: true`)
    Whole,
    /// a connection URL: only its password (userinfo or `password=`) is secret
    UrlPassword,
}

/// One option of a module.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    pub name: &'static str,
    pub ty: Type,
    pub required: bool,
    pub default: Option<Dflt>,
    pub choices: &'static [&'static str],
    pub secret: Secret,
    /// element type of a `list`
    pub elements: Option<Type>,
    /// options of a `dict`, or of each `dict` element of a `list`
    pub suboptions: &'static [Opt],
    pub aliases: &'static [&'static str],
}

impl Opt {
    pub const fn new(name: &'static str, ty: Type) -> Opt {
        Opt {
            name,
            ty,
            required: false,
            default: None,
            choices: &[],
            secret: Secret::No,
            elements: None,
            suboptions: &[],
            aliases: &[],
        }
    }
    pub const fn str(name: &'static str) -> Opt {
        Opt::new(name, Type::Str)
    }
    pub const fn int(name: &'static str) -> Opt {
        Opt::new(name, Type::Int)
    }
    pub const fn bool(name: &'static str) -> Opt {
        Opt::new(name, Type::Bool)
    }
    pub const fn required(self) -> Opt {
        Opt {
            required: true,
            ..self
        }
    }
    pub const fn default(self, d: Dflt) -> Opt {
        Opt {
            default: Some(d),
            ..self
        }
    }
    pub const fn choices(self, c: &'static [&'static str]) -> Opt {
        Opt { choices: c, ..self }
    }
    pub const fn no_log(self) -> Opt {
        Opt {
            secret: Secret::Whole,
            ..self
        }
    }
    pub const fn url_password(self) -> Opt {
        Opt {
            secret: Secret::UrlPassword,
            ..self
        }
    }
    pub const fn elements(self, t: Type) -> Opt {
        Opt {
            elements: Some(t),
            ..self
        }
    }
    pub const fn suboptions(self, s: &'static [Opt]) -> Opt {
        Opt {
            suboptions: s,
            ..self
        }
    }
    pub const fn aliases(self, a: &'static [&'static str]) -> Opt {
        Opt { aliases: a, ..self }
    }
}

/// A module's argument spec.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub options: &'static [Opt],
    pub mutually_exclusive: &'static [&'static [&'static str]],
    pub required_together: &'static [&'static [&'static str]],
    pub required_one_of: &'static [&'static [&'static str]],
    /// `(option, value, options required when option == value)`
    pub required_if: &'static [(&'static str, &'static str, &'static [&'static str])],
}

impl Spec {
    pub const fn new(options: &'static [Opt]) -> Spec {
        Spec {
            options,
            mutually_exclusive: &[],
            required_together: &[],
            required_one_of: &[],
            required_if: &[],
        }
    }
}

/// Validated parameters: every option of the spec, typed, defaults applied (`Null` = not set).
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    values: Map<String, Value>,
    /// options the user gave (non-null), after alias resolution
    given: BTreeSet<String>,
}

impl Params {
    pub fn get(&self, k: &str) -> Option<&Value> {
        self.values.get(k).filter(|v| !v.is_null())
    }
    pub fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(Value::as_str)
    }
    pub fn int(&self, k: &str) -> Option<i64> {
        self.get(k).and_then(Value::as_i64)
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        self.get(k).and_then(Value::as_bool)
    }
    pub fn list(&self, k: &str) -> Option<&Vec<Value>> {
        self.get(k).and_then(Value::as_array)
    }
    pub fn dict(&self, k: &str) -> Option<&Map<String, Value>> {
        self.get(k).and_then(Value::as_object)
    }
    pub fn path(&self, k: &str) -> Option<PathBuf> {
        self.str(k).map(PathBuf::from)
    }
    /// Did the user set this option (to a non-null value)?
    pub fn is_set(&self, k: &str) -> bool {
        self.given.contains(k)
    }
    /// All values (for `invocation.module_args`).
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }
}

fn list_words(v: &[&str]) -> String {
    v.join(", ")
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "None",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Ansible's `boolean()`: true/yes/on/1/y/t and false/no/off/0/n/f, case-insensitive.
fn to_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "y" | "t" => Ok(true),
            "false" | "no" | "off" | "0" | "n" | "f" => Ok(false),
            _ => Err(format!("the value {s:?} is not a valid boolean (expected one of true, false, yes, no, on, off, 1, 0)")),
        },
        other => Err(format!("{} is not a valid boolean", type_of(other))),
    }
}

fn to_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                _ => Err(format!("{n} is not an integer")),
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("invalid literal for int(): {s:?}")),
        Value::Bool(_) => Err("a bool is not an integer".into()),
        other => Err(format!("{} is not an integer", type_of(other))),
    }
}

fn to_str(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // Ansible converts scalars to str (with a warning for Python modules)
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "True" } else { "False" }.to_string()),
        other => Err(format!("{} is not a string", type_of(other))),
    }
}

fn to_list(v: &Value) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        // Ansible splits a string on commas
        Value::String(s) => {
            if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(s) {
                return Ok(a);
            }
            Ok(s.split(',').map(|x| Value::from(x.trim())).collect())
        }
        Value::Number(_) | Value::Bool(_) => Ok(vec![v.clone()]),
        other => Err(format!("{} is not a list", type_of(other))),
    }
}

/// Ansible's `check_type_dict`: a dict, a JSON object string or `k1=v1, k2=v2`.
fn to_dict(v: &Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with('{') {
                return match serde_json::from_str::<Value>(t) {
                    Ok(Value::Object(m)) => Ok(m),
                    _ => Err("the string is not a JSON object".into()),
                };
            }
            let mut m = Map::new();
            for part in t.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
                let (k, val) = part
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?} is not key=value"))?;
                m.insert(k.trim().to_string(), Value::from(val.trim()));
            }
            Ok(m)
        }
        other => Err(format!("{} is not a dict", type_of(other))),
    }
}

/// `~` and `$VAR`/`${VAR}` expansion of a `path` option.
fn expand_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let s = if let Some(rest) = s.strip_prefix('~') {
        if rest.is_empty() || rest.starts_with('/') {
            out.push_str(&std::env::var("HOME").unwrap_or_default());
            rest
        } else {
            s
        }
    } else {
        s
    };
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' && i + 1 < b.len() {
            let (name, end) = if b[i + 1] == '{' {
                match b[i + 2..].iter().position(|c| *c == '}') {
                    Some(p) => (b[i + 2..i + 2 + p].iter().collect::<String>(), i + 3 + p),
                    None => (String::new(), i),
                }
            } else {
                let n: String = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                let len = n.chars().count();
                (n, i + 1 + len)
            };
            if !name.is_empty() {
                if let Ok(v) = std::env::var(&name) {
                    out.push_str(&v);
                    i = end;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn coerce(ty: Type, v: &Value) -> Result<Value, String> {
    Ok(match ty {
        Type::Str => Value::String(to_str(v)?),
        Type::Path => Value::String(expand_path(&to_str(v)?)),
        Type::Int => Value::Number(Number::from(to_int(v)?)),
        Type::Bool => Value::Bool(to_bool(v)?),
        Type::List => Value::Array(to_list(v)?),
        Type::Dict => Value::Object(to_dict(v)?),
        Type::Raw => v.clone(),
    })
}

/// Validate `input` (the user's options, `_ansible_*` keys already removed) against `options`.
/// `ctx` is `""` at the top level, else ` found in nodes_specs` (Ansible's wording).
fn validate_level(
    spec: &Spec,
    input: &Map<String, Value>,
    ctx: &str,
    module: &str,
    errors: &mut Vec<String>,
) -> Params {
    let options = spec.options;
    // aliases → canonical names
    let mut raw = Map::new();
    let mut unknown = Vec::new();
    for (k, v) in input {
        let canon = options
            .iter()
            .find(|o| o.name == k || o.aliases.contains(&k.as_str()));
        match canon {
            Some(o) => {
                if raw.contains_key(o.name) && !v.is_null() {
                    errors.push(format!(
                        "option {} is given more than once (as {k} and an alias){ctx}",
                        o.name
                    ));
                }
                if !v.is_null() || !raw.contains_key(o.name) {
                    raw.insert(o.name.to_string(), v.clone());
                }
            }
            None => unknown.push(k.as_str()),
        }
    }
    if !unknown.is_empty() {
        let mut supported: Vec<&str> = options
            .iter()
            .flat_map(|o| std::iter::once(o.name).chain(o.aliases.iter().copied()))
            .collect();
        supported.sort_unstable();
        if ctx.is_empty() {
            errors.push(format!(
                "Unsupported parameters for ({module}) module: {}. Supported parameters include: {}.",
                list_words(&unknown),
                list_words(&supported)
            ));
        } else {
            errors.push(format!(
                "Unsupported parameters for ({module}) module: {}{ctx}. Supported parameters include: {}.",
                list_words(&unknown),
                list_words(&supported)
            ));
        }
    }
    let present = |k: &str| raw.get(k).is_some_and(|v| !v.is_null());

    for group in spec.mutually_exclusive {
        let set: Vec<&str> = group.iter().copied().filter(|k| present(k)).collect();
        if set.len() > 1 {
            errors.push(format!(
                "parameters are mutually exclusive: {}{ctx}",
                set.join("|")
            ));
        }
    }

    let missing: Vec<&str> = options
        .iter()
        .filter(|o| o.required && !present(o.name))
        .map(|o| o.name)
        .collect();
    if !missing.is_empty() {
        errors.push(format!(
            "missing required arguments: {}{ctx}",
            missing.join(", ")
        ));
    }

    let mut values = Map::new();
    let mut given = BTreeSet::new();
    for o in options {
        let v = match raw.get(o.name) {
            Some(v) if !v.is_null() => {
                given.insert(o.name.to_string());
                match coerce(o.ty, v) {
                    Ok(mut c) => {
                        if let (Some(et), Value::Array(items)) = (o.elements, &mut c) {
                            for (i, item) in items.iter_mut().enumerate() {
                                match coerce(et, item) {
                                    Ok(x) => *item = x,
                                    Err(e) => errors.push(format!(
                                        "Elements value for option '{}'{ctx} is of type {} and we were unable to convert to {}: {e} (element {})",
                                        o.name,
                                        type_of(item),
                                        et.name(),
                                        i + 1
                                    )),
                                }
                            }
                        }
                        c
                    }
                    Err(e) => {
                        errors.push(format!(
                            "argument '{}'{ctx} is of type {} and we were unable to convert to {}: {e}",
                            o.name,
                            type_of(v),
                            o.ty.name()
                        ));
                        Value::Null
                    }
                }
            }
            _ => o.default.map(Dflt::value).unwrap_or(Value::Null),
        };
        // choices (for lists: every element)
        if !o.choices.is_empty() && !v.is_null() {
            let bad: Vec<String> = match &v {
                Value::Array(items) => items
                    .iter()
                    .map(|x| to_str(x).unwrap_or_else(|_| x.to_string()))
                    .filter(|s| !o.choices.contains(&s.as_str()))
                    .collect(),
                other => {
                    let s = to_str(other).unwrap_or_else(|_| other.to_string());
                    if o.choices.contains(&s.as_str()) {
                        vec![]
                    } else {
                        vec![s]
                    }
                }
            };
            if !bad.is_empty() {
                let shown = if o.secret == Secret::No {
                    bad.join(", ")
                } else {
                    "(hidden)".to_string()
                };
                errors.push(format!(
                    "value of {} must be one of: {}, got: {shown}{ctx}",
                    o.name,
                    list_words(o.choices)
                ));
            }
        }
        // sub-options: a dict, or every dict of a list
        let v = if !o.suboptions.is_empty() && !v.is_null() {
            let sub = Spec::new(o.suboptions);
            let check = |m: &Map<String, Value>, errors: &mut Vec<String>, at: String| {
                Value::Object(
                    validate_level(&sub, m, &format!(" found in {at}"), module, errors)
                        .values
                        .into_iter()
                        .collect(),
                )
            };
            match v {
                Value::Object(m) => check(&m, errors, o.name.to_string()),
                Value::Array(items) => Value::Array(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| match to_dict(item) {
                            Ok(m) => check(&m, errors, format!("{} (element {})", o.name, i + 1)),
                            Err(e) => {
                                errors.push(format!(
                                    "Elements value for option '{}'{ctx} is of type {} and we were unable to convert to dict: {e} (element {})",
                                    o.name,
                                    type_of(item),
                                    i + 1
                                ));
                                Value::Null
                            }
                        })
                        .collect(),
                ),
                other => other,
            }
        } else {
            v
        };
        values.insert(o.name.to_string(), v);
    }

    for (k, val, needed) in spec.required_if {
        let matches = values
            .get(*k)
            .is_some_and(|v| to_str(v).ok().as_deref() == Some(*val));
        if matches {
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|n| values.get(*n).is_none_or(Value::is_null))
                .collect();
            if !missing.is_empty() {
                errors.push(format!(
                    "{k} is {val} but all of the following are missing: {}{ctx}",
                    missing.join(", ")
                ));
            }
        }
    }
    for group in spec.required_together {
        let set = group.iter().filter(|k| given.contains(**k)).count();
        if set > 0 && set < group.len() {
            errors.push(format!(
                "parameters are required together: {}{ctx}",
                group.join(", ")
            ));
        }
    }
    for group in spec.required_one_of {
        if !group.iter().any(|k| given.contains(*k)) {
            errors.push(format!(
                "one of the following is required: {}{ctx}",
                group.join(", ")
            ));
        }
    }
    Params { values, given }
}

/// Validate a module's options. `Err` carries every problem, joined in one message.
pub fn validate(spec: &Spec, input: &Map<String, Value>, module: &str) -> Result<Params, String> {
    let mut errors = Vec::new();
    let p = validate_level(spec, input, "", module, &mut errors);
    if errors.is_empty() {
        Ok(p)
    } else {
        Err(errors.join(" "))
    }
}

/// Every secret string among `input` (no_log values, URL passwords), also inside sub-options.
pub fn secrets_of(options: &[Opt], input: &Map<String, Value>, out: &mut Vec<String>) {
    for o in options {
        let Some(v) = input.get(o.name) else {
            continue;
        };
        match o.secret {
            Secret::Whole => collect_strings(v, out),
            Secret::UrlPassword => {
                if let Value::String(s) = v {
                    out.extend(url_passwords(s));
                }
            }
            Secret::No => {}
        }
        if !o.suboptions.is_empty() {
            match v {
                Value::Object(m) => secrets_of(o.suboptions, m, out),
                Value::Array(items) => {
                    for i in items {
                        if let Value::Object(m) = i {
                            secrets_of(o.suboptions, m, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// The password(s) in a connection URL: the userinfo's (raw and percent-decoded) and any
/// `password=` parameter (URL query or libpq keyword string).
pub fn url_passwords(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(i) = url.find("://") {
        let rest = &url[i + 3..];
        let end = rest.find(['?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            if let Some((_, pw)) = rest[..at].split_once(':') {
                out.push(pw.to_string());
                let dec = crate::percent::decode(pw);
                if dec != pw {
                    out.push(dec);
                }
            }
        }
    }
    let lower = url.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(f) = lower[pos..].find("password=") {
        let start = pos + f + "password=".len();
        let v = &url[start..];
        let (v, len) = match v.strip_prefix('\'') {
            // libpq: 'quoted value' with \' and \\ escapes
            Some(q) => {
                let mut escaped = false;
                let mut end = q.len();
                for (i, c) in q.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '\'' => {
                            end = i;
                            break;
                        }
                        _ => {}
                    }
                }
                (q, end)
            }
            None => (
                v,
                v.find(|c: char| c.is_whitespace() || matches!(c, '&' | '#' | ';'))
                    .unwrap_or(v.len()),
            ),
        };
        if len > 0 {
            out.push(v[..len].to_string());
            let dec = crate::percent::decode(&v[..len]);
            if dec != v[..len] {
                out.push(dec);
            }
        }
        pos = start;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SUB: &[Opt] = &[Opt::str("pool").required(), Opt::int("quantity").required()];
    const OPTS: &[Opt] = &[
        Opt::str("name").required(),
        Opt::int("n"),
        Opt::bool("flag").default(Dflt::Bool(false)),
        Opt::str("state")
            .choices(&["present", "absent"])
            .default(Dflt::Str("present")),
        Opt::str("key").no_log(),
        Opt::new("specs", Type::List)
            .elements(Type::Dict)
            .suboptions(SUB),
        Opt::new("data", Type::Dict),
        Opt::str("a"),
        Opt::str("b"),
    ];
    const SPEC: Spec = Spec {
        options: OPTS,
        mutually_exclusive: &[&["a", "b"]],
        required_together: &[],
        required_one_of: &[],
        required_if: &[("state", "absent", &["n"])],
    };

    fn v(j: Value) -> Result<Params, String> {
        validate(&SPEC, j.as_object().unwrap(), "m")
    }

    #[test]
    fn coerces_free_form_strings_and_applies_defaults() {
        let p = v(json!({"name": "x", "n": "5", "flag": "yes", "data": "a=1, b=2"})).unwrap();
        assert_eq!(p.int("n"), Some(5));
        assert_eq!(p.bool("flag"), Some(true));
        assert_eq!(p.str("state"), Some("present"));
        assert!(p.is_set("n") && !p.is_set("state"));
        assert_eq!(p.dict("data").unwrap()["b"], json!("2"));
        let p = v(json!({"name": 5})).unwrap();
        assert_eq!(p.str("name"), Some("5"));
        assert_eq!(p.bool("flag"), Some(false));
    }

    #[test]
    fn reports_every_error() {
        let e = v(json!({"n": "x", "state": "gone", "a": "1", "b": "2", "bogus": 1})).unwrap_err();
        assert!(
            e.contains("Unsupported parameters for (m) module: bogus."),
            "{e}"
        );
        assert!(e.contains("parameters are mutually exclusive: a|b"), "{e}");
        assert!(e.contains("missing required arguments: name"), "{e}");
        assert!(
            e.contains("argument 'n' is of type str and we were unable to convert to int"),
            "{e}"
        );
        assert!(
            e.contains("value of state must be one of: present, absent, got: gone"),
            "{e}"
        );
    }

    #[test]
    fn required_if_and_suboptions() {
        let e = v(json!({"name": "x", "state": "absent"})).unwrap_err();
        assert!(
            e.contains("state is absent but all of the following are missing: n"),
            "{e}"
        );
        let e = v(
            json!({"name": "x", "specs": [{"pool": "p"}, {"pool": "q", "quantity": "z", "x": 1}]}),
        )
        .unwrap_err();
        assert!(
            e.contains("missing required arguments: quantity found in specs (element 1)"),
            "{e}"
        );
        assert!(
            e.contains("Unsupported parameters for (m) module: x found in specs (element 2)"),
            "{e}"
        );
        let p = v(json!({"name": "x", "specs": [{"pool": "p", "quantity": "2"}]})).unwrap();
        assert_eq!(
            p.list("specs").unwrap()[0],
            json!({"pool": "p", "quantity": 2})
        );
    }

    #[test]
    fn secrets_are_collected() {
        let mut s = Vec::new();
        secrets_of(OPTS, json!({"key": "k1"}).as_object().unwrap(), &mut s);
        assert_eq!(s, vec!["k1"]);
        assert_eq!(
            url_passwords("postgresql://u:p%40ss@h/db?password=zz"),
            vec!["p%40ss", "p@ss", "zz"]
        );
        assert_eq!(url_passwords("host=db password='x y' user=u"), vec!["x y"]);
    }
}
