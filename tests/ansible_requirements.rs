//! `requirements.yml` names every Ansible collection the playbooks and roles use (issue 15
//! item 6). The file is parsed by ansible-galaxy's own requirements parser (real ansible-core,
//! `.ci/ansible-venv.sh`); the content of `playbooks/` and `roles/` is walked for what it
//! uses: each task's module or action (FQCN or short name, inside blocks too), `collections:`
//! of plays, roles (`roles:`, `include_role`/`import_role`), and plugins named in Jinja
//! (`lookup('ns.coll.x')`, `query(…)`, `| ns.coll.filter`, `is ns.coll.test`).
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_yaml::Value;

/// Task keywords (ansible-core 2.19's `Task`/`Block`/`Handler` attributes): any other key of a
/// task is its module.
const TASK_KEYWORDS: &[&str] = &[
    "action",
    "always",
    "any_errors_fatal",
    "args",
    "async",
    "become",
    "become_exe",
    "become_flags",
    "become_method",
    "become_user",
    "block",
    "changed_when",
    "check_mode",
    "collections",
    "connection",
    "debugger",
    "delay",
    "delegate_facts",
    "delegate_to",
    "diff",
    "environment",
    "failed_when",
    "ignore_errors",
    "ignore_unreachable",
    "listen",
    "local_action",
    "loop",
    "loop_control",
    "module_defaults",
    "name",
    "no_log",
    "notify",
    "poll",
    "port",
    "register",
    "remote_user",
    "rescue",
    "retries",
    "run_once",
    "tags",
    "throttle",
    "timeout",
    "until",
    "vars",
    "when",
];

#[derive(Default)]
struct Uses {
    /// (FQCN or short name of a module/action, file)
    modules: BTreeSet<(String, String)>,
    /// (FQCN of a lookup/filter/test plugin, file)
    plugins: BTreeSet<(String, String)>,
    /// (`ns.coll` of a play's `collections:`, file)
    collections: BTreeSet<(String, String)>,
    /// (role name, file)
    roles: BTreeSet<(String, String)>,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        // playbooks/roles and playbooks/library are links to roles/ and modules/
        if e.file_type().unwrap().is_symlink() {
            continue;
        }
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yml" || x == "yaml") {
            out.push(p);
        }
    }
}

fn tasks(list: &Value, file: &str, u: &mut Uses) {
    let Some(list) = list.as_sequence() else {
        return;
    };
    for t in list {
        let Some(m) = t.as_mapping() else { continue };
        for k in ["block", "rescue", "always"] {
            if let Some(inner) = m.get(k) {
                tasks(inner, file, u);
            }
        }
        if m.contains_key("block") {
            continue;
        }
        let mut module = None;
        for (k, v) in m {
            let k = k.as_str().unwrap_or_default();
            if k.starts_with("with_") || TASK_KEYWORDS.contains(&k) {
                continue;
            }
            assert!(module.is_none(), "{file}: a task with two modules? {m:?}");
            module = Some(k.to_string());
            if k.ends_with("include_role") || k.ends_with("import_role") {
                if let Some(name) = v.get("name").and_then(Value::as_str) {
                    u.roles.insert((name.to_string(), file.to_string()));
                }
            }
        }
        // `action: module args…` / `local_action:` name the module in their value
        for k in ["action", "local_action"] {
            match m.get(k) {
                Some(Value::String(s)) => module = s.split_whitespace().next().map(String::from),
                Some(Value::Mapping(a)) => {
                    module = a.get("module").and_then(Value::as_str).map(String::from)
                }
                _ => {}
            }
        }
        let module = module.unwrap_or_else(|| panic!("{file}: a task without a module: {m:?}"));
        u.modules.insert((module, file.to_string()));
    }
}

fn plays(doc: &Value, file: &str, u: &mut Uses) {
    let Some(list) = doc.as_sequence() else {
        return;
    };
    for play in list {
        if let Some(p) = play.get("import_playbook").and_then(Value::as_str) {
            let _ = p;
            continue;
        }
        for k in ["pre_tasks", "tasks", "post_tasks", "handlers"] {
            if let Some(t) = play.get(k) {
                tasks(t, file, u);
            }
        }
        for c in play
            .get("collections")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            u.collections
                .insert((c.as_str().unwrap().to_string(), file.to_string()));
        }
        for r in play
            .get("roles")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = match r {
                Value::String(s) => s.clone(),
                other => other
                    .get("role")
                    .or_else(|| other.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            u.roles.insert((name, file.to_string()));
        }
    }
}

/// Plugins named by FQCN in Jinja anywhere in the document's strings.
fn jinja(v: &Value, file: &str, u: &mut Uses, re: &[regex::Regex]) {
    match v {
        Value::String(s) => {
            for r in re {
                for c in r.captures_iter(s) {
                    u.plugins.insert((c[1].to_string(), file.to_string()));
                }
            }
        }
        Value::Sequence(l) => l.iter().for_each(|x| jinja(x, file, u, re)),
        Value::Mapping(m) => m.iter().for_each(|(_, x)| jinja(x, file, u, re)),
        Value::Tagged(t) => jinja(&t.value, file, u, re),
        _ => {}
    }
}

fn scan() -> Uses {
    let fqcn = r"([a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*)";
    let re: Vec<regex::Regex> = [
        format!(r#"(?:lookup|query|q)\(\s*['"]{fqcn}['"]"#),
        format!(r"\|\s*{fqcn}\b"),
        format!(r"\bis\s+(?:not\s+)?{fqcn}\b"),
    ]
    .iter()
    .map(|r| regex::Regex::new(r).unwrap())
    .collect();
    let mut files = Vec::new();
    yaml_files(&repo().join("playbooks"), &mut files);
    yaml_files(&repo().join("roles"), &mut files);
    let mut u = Uses::default();
    for f in &files {
        let rel = f.strip_prefix(repo()).unwrap().display().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        let doc: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"));
        jinja(&doc, &rel, &mut u, &re);
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            ["roles", _, "tasks" | "handlers", ..] => tasks(&doc, &rel, &mut u),
            ["roles", _, "meta", "main.yml"] => {
                for c in doc
                    .get("collections")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    u.collections
                        .insert((c.as_str().unwrap().to_string(), rel.clone()));
                }
            }
            ["playbooks", ..] if doc.is_sequence() => plays(&doc, &rel, &mut u),
            _ => {}
        }
    }
    u
}

/// `requirements.yml` as ansible-galaxy reads it: (collection FQCN, version spec) and role names.
fn requirements() -> (Vec<(String, String)>, Vec<String>) {
    let o = Command::new(ansible_bin().join("python3"))
        .current_dir(repo())
        .args([
            "-c",
            "import json\n\
             from ansible.cli.galaxy import GalaxyCLI\n\
             cli = GalaxyCLI(['ansible-galaxy', 'collection', 'install', '-r', 'requirements.yml'])\n\
             cli.parse()\n\
             r = cli._parse_requirements_file('requirements.yml', allow_old_format=False)\n\
             print(json.dumps({'collections': [[c.fqcn, c.ver] for c in r['collections']],\n\
             \x20                 'roles': [x.name for x in r['roles']]}))\n",
        ])
        .output()
        .expect("run ansible-core's python");
    assert!(
        o.status.success(),
        "ansible-galaxy cannot read requirements.yml: {}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let cols = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let roles = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (cols, roles)
}

/// Is `name` a module or action of ansible-core (a file in its `modules/` or `plugins/action/`)?
fn builtin(name: &str) -> bool {
    let lib = ansible_bin().parent().unwrap().join("lib");
    std::fs::read_dir(&lib).unwrap().any(|py| {
        let ansible = py.unwrap().path().join("site-packages/ansible");
        ansible.join(format!("modules/{name}.py")).is_file()
            || ansible.join(format!("plugins/action/{name}.py")).is_file()
    })
}

#[test]
fn requirements_yml_lists_every_collection_the_playbooks_and_roles_use() {
    let (listed, listed_roles) = requirements();
    let u = scan();
    let ours: BTreeSet<String> = std::fs::read_dir(repo().join("modules"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "yml").then(|| p.file_stem().unwrap().to_string_lossy().into())
        })
        .collect();
    let local_roles: BTreeSet<String> = std::fs::read_dir(repo().join("roles"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let is_listed = |coll: &str| listed.iter().any(|(c, _)| c == coll);
    let collection_of = |fqcn: &str| -> Option<String> {
        let mut p = fqcn.splitn(3, '.');
        match (p.next(), p.next(), p.next()) {
            (Some(a), Some(b), Some(_)) => Some(format!("{a}.{b}")),
            _ => None,
        }
    };
    let core = |c: &str| c == "ansible.builtin" || c == "ansible.legacy";

    let mut missing = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (m, file) in &u.modules {
        match collection_of(m) {
            Some(c) if core(&c) => assert!(builtin(&m[c.len() + 1..]), "{file}: no module {m}"),
            Some(c) => {
                used.insert(c.clone());
                if !is_listed(&c) {
                    missing.push(format!("{file}: module {m} (collection {c})"));
                }
            }
            None if ours.contains(m) || builtin(m) => {}
            None => missing.push(format!(
                "{file}: module {m} is neither ansible-core's, nor in modules/, nor a collection's FQCN"
            )),
        }
    }
    for (p, file) in &u.plugins {
        let c = collection_of(p).unwrap();
        if !core(&c) {
            used.insert(c.clone());
            if !is_listed(&c) {
                missing.push(format!("{file}: plugin {p} (collection {c})"));
            }
        }
    }
    for (c, file) in &u.collections {
        if !core(c) {
            used.insert(c.clone());
            if !is_listed(c) {
                missing.push(format!("{file}: collections: {c}"));
            }
        }
    }
    for (r, file) in &u.roles {
        match collection_of(r) {
            Some(c) => {
                used.insert(c.clone());
                if !is_listed(&c) {
                    missing.push(format!("{file}: role {r} (collection {c})"));
                }
            }
            None if local_roles.contains(r) || listed_roles.contains(r) => {}
            None => missing.push(format!("{file}: role {r} is neither in roles/ nor listed")),
        }
    }
    assert!(
        missing.is_empty(),
        "not in requirements.yml:\n{}",
        missing.join("\n")
    );
    // nothing listed that nothing uses, and the walk found what it must (not vacuous)
    let listed_names: BTreeSet<String> = listed.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(listed_names, used, "requirements.yml vs what is used");
    assert!(
        u.modules
            .iter()
            .any(|(m, f)| m == "amazon.aws.ec2_instance" && f == "playbooks/ec2-provision.yml"),
        "the scan did not find the EC2 module"
    );
    assert!(u.modules.iter().any(|(m, _)| m == "duffy_node"));
    assert!(u
        .modules
        .iter()
        .any(|(m, _)| m == "ansible.builtin.include_role"));
    assert!(u.plugins.iter().any(|(p, _)| p == "ansible.builtin.file"));
    // every listed collection pins a lower bound
    for (c, v) in &listed {
        assert!(
            v.starts_with(">="),
            "{c}: version {v:?} should be a lower bound"
        );
    }
}
