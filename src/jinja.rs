//! The one Jinja2-compatible template environment (minijinja), shared by the legacy API's
//! `metaclient.poolmap` / `mangle_hostname` and the scheduler's templated `extra-vars` and
//! `reuse-nodes` (compat spec §5, §8.2, §8.3).

use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// A minijinja environment that renders like `jinja2.Template(src).render(...)`: undefined
/// renders empty, `replace`/`default`/… and Python string methods work, no autoescape,
/// `True`/`False`/`None` like Python's `str()`.
pub fn jinja2_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
        ValueKind::None => out
            .write_str("None")
            .map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure)),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env
}

/// A JSON value as a template value.
pub fn value(v: &serde_json::Value) -> minijinja::Value {
    use serde_json::Value as J;
    match v {
        J::Null => minijinja::Value::from(()),
        J::Bool(b) => minijinja::Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => minijinja::Value::from(i),
            (None, Some(f)) => minijinja::Value::from(f),
            _ => minijinja::Value::from(n.to_string()),
        },
        J::String(s) => minijinja::Value::from(s.as_str()),
        J::Array(a) => minijinja::Value::from(a.iter().map(value).collect::<Vec<_>>()),
        J::Object(o) => minijinja::Value::from_object(
            o.iter()
                .map(|(k, v)| (k.clone(), value(v)))
                .collect::<std::collections::BTreeMap<String, minijinja::Value>>(),
        ),
    }
}

/// Render one template string with the variables of `ctx` (a JSON object).
pub fn render(src: &str, ctx: &serde_json::Value) -> Result<String, minijinja::Error> {
    jinja2_env().render_str(src, value(ctx))
}
