//! upstream `duffy client`'s three output formats, byte for byte (compat spec §6.4):
//!
//! * [`format_json`]: Python's `json.dumps(result, indent=4)` (upstream 3.4.0's formatter);
//! * [`format_yaml`]: PyYAML's `yaml.dump(result)` (block style, keys sorted, 80 columns);
//! * [`format_flat`]: upstream's `DuffyFlatFormatter`, with bug 25 fixed (an API error prints
//!   `error='<detail>'` instead of crashing).

use serde_json::Value;

use crate::state::NodeState;

/// `json.dumps(result, indent=4)`, as upstream's `duffy client` prints it (no final newline).
pub fn format_json(v: &Value) -> String {
    super::to_python_json_indented(v)
}

/// `yaml.dump(result)` of PyYAML (ends with a newline).
pub fn format_yaml(v: &Value) -> String {
    super::pyyaml::dump(v)
}

/// upstream's `DuffyFlatFormatter.format_key_value`.
fn flat_kv(out: &mut String, key: &str, v: &Value) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push('=');
    out.push_str(&super::flat_value(v));
}

fn flat_pool(pool: &Value) -> String {
    let mut line = String::new();
    flat_kv(
        &mut line,
        "pool_name",
        pool.get("name").unwrap_or(&Value::Null),
    );
    let fill = pool
        .get("fill-level")
        .or_else(|| pool.get("fill_level"))
        .unwrap_or(&Value::Null);
    flat_kv(&mut line, "fill_level", fill);
    if let Some(levels) = pool.get("levels") {
        for state in NodeState::LEVELS.map(NodeState::as_str) {
            flat_kv(
                &mut line,
                &format!("levels_{state}"),
                levels.get(state).unwrap_or(&Value::Null),
            );
        }
    }
    line
}

fn flat_session(session: &Value, lines: &mut Vec<String>) {
    let null = Value::Null;
    let mut nodes: Vec<&Value> = session
        .get("nodes")
        .and_then(Value::as_array)
        .map(|n| n.iter().collect())
        .unwrap_or_default();
    let key = |n: &Value, k: &str| n.get(k).and_then(Value::as_str).map(str::to_string);
    nodes.sort_by_key(|n| (key(n, "pool"), key(n, "hostname"), key(n, "ipaddr")));
    for node in nodes {
        let mut line = String::new();
        flat_kv(&mut line, "session_id", session.get("id").unwrap_or(&null));
        flat_kv(&mut line, "active", session.get("active").unwrap_or(&null));
        for k in ["created_at", "retired_at"] {
            flat_kv(&mut line, k, session.get(k).unwrap_or(&null));
        }
        for k in ["pool", "hostname", "ipaddr"] {
            flat_kv(&mut line, k, node.get(k).unwrap_or(&null));
        }
        lines.push(line);
    }
}

/// upstream's `DuffyFlatFormatter.format` (no final newline; may be empty). API errors give
/// `error='<detail>'` (upstream 3.4.0 crashes there, spec §12 bug 25).
pub fn format_flat(result: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(err) = result.get("error") {
        let mut line = String::new();
        flat_kv(
            &mut line,
            "error",
            err.get("detail").unwrap_or(&Value::Null),
        );
        lines.push(line);
    } else if let Some(pool) = result.get("pool") {
        lines.push(flat_pool(pool));
    } else if let Some(pools) = result.get("pools") {
        for p in pools.as_array().into_iter().flatten() {
            lines.push(flat_pool(p));
        }
    } else if let Some(s) = result.get("session") {
        flat_session(s, &mut lines);
    } else if let Some(ss) = result.get("sessions") {
        for s in ss.as_array().into_iter().flatten() {
            flat_session(s, &mut lines);
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_floats() {
        for (f, s) in [
            (21600.0, "21600.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(super::super::python_float(f), s, "{f}");
        }
    }

    #[test]
    fn json_indent4() {
        let v = json!({"action": "get", "pools": [{"name": "p", "fill-level": 5}], "e": [], "o": {}, "x": "é\u{7f}", "f": 21600.0});
        assert_eq!(
            format_json(&v),
            "{\n    \"action\": \"get\",\n    \"pools\": [\n        {\n            \"name\": \"p\",\n            \"fill-level\": 5\n        }\n    ],\n    \"e\": [],\n    \"o\": {},\n    \"x\": \"\\u00e9\\u007f\",\n    \"f\": 21600.0\n}"
        );
    }

    #[test]
    fn flat_formats() {
        let pools = json!({"action": "get", "pools": [{"name": "p", "fill-level": 5}]});
        assert_eq!(format_flat(&pools), "pool_name='p' fill_level=5");
        let pool = json!({"action": "get", "pool": {"name": "p", "fill-level": 5, "levels":
            {"provisioning": 0, "ready": 5, "contextualizing": 0, "deployed": 1, "deprovisioning": 0}}});
        assert_eq!(
            format_flat(&pool),
            "pool_name='p' fill_level=5 levels_provisioning=0 levels_ready=5 levels_contextualizing=0 levels_deployed=1 levels_deprovisioning=0"
        );
        let s = json!({"action": "get", "session": {"id": 3, "active": true, "created_at": "T",
            "retired_at": null, "nodes": [
                {"pool": "p", "hostname": "b", "ipaddr": "127.0.0.2"},
                {"pool": "p", "hostname": "a", "ipaddr": "127.0.0.3"}]}});
        assert_eq!(
            format_flat(&s),
            "session_id=3 active=TRUE created_at='T' retired_at= pool='p' hostname='a' ipaddr='127.0.0.3'\nsession_id=3 active=TRUE created_at='T' retired_at= pool='p' hostname='b' ipaddr='127.0.0.2'"
        );
        assert_eq!(format_flat(&json!({"action": "get", "sessions": []})), "");
        assert_eq!(
            format_flat(&json!({"error": {"detail": "can't reserve"}})),
            "error='can'\"'\"'t reserve'"
        );
    }
}
