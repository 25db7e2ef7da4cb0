//! Node pools (`nodepools.abstract` / `nodepools.concrete`, compat spec §8.1): `extends`
//! inheritance with upstream's deep-merge rule, then the known keys typed and checked.
//! The merged free-form map of a pool is kept (`vars`): it is what playbook templates see.

use std::path::PathBuf;

use serde_yaml::{Mapping, Value};

use super::lax;
use super::merge::{deep_merge, key_text, kind};
use super::{ConfigError, RawConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Abstract,
    Concrete,
}

/// How tenants' SSH keys reach a node at allocation (duffy's pool key `contextualize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contextualize {
    /// install the key over SSH as upstream does (default)
    Ssh,
    /// skip: the pool's playbook handles keys, or nodes are address-only
    None,
}

/// A playbook reference of a mechanism.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    pub playbook: String,
    pub extra_vars: Mapping,
}

/// `mechanism` (only `type: ansible` exists). Every concrete pool has one; its `provision`
/// is `None` when the config names no provision playbook (upstream loads such pools too).
#[derive(Debug, Clone, PartialEq)]
pub struct Mechanism {
    pub topdir: Option<PathBuf>,
    pub extra_vars: Mapping,
    pub provision: Option<Playbook>,
    pub deprovision: Option<Playbook>,
    /// duffy's own `reconcile` playbook (`duffy reconcile`): lists the provider's instances of
    /// the pool and terminates the ones it is given (`playbooks/ec2-reconcile.yml`)
    pub reconcile: Option<Playbook>,
}

/// One pool after inheritance.
#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub kind: PoolKind,
    /// merged pool map including `name`, without `extends`
    pub vars: Mapping,
    pub fill_level: Option<u32>,
    /// `reuse-nodes`: data key → template string or integer
    pub reuse_nodes: Option<Mapping>,
    pub run_parallel: bool,
    pub mechanism: Option<Mechanism>,
    pub contextualize: Contextualize,
}

struct Ctx<'a> {
    raw: &'a RawConfig,
    path: String,
}

impl Ctx<'_> {
    fn err(&self, key: &str, msg: impl Into<String>) -> ConfigError {
        let p = if key.is_empty() {
            self.path.clone()
        } else {
            format!("{}.{key}", self.path)
        };
        self.raw.invalid(&p, msg)
    }
}

fn get_str(ctx: &Ctx, m: &Mapping, key: &str, path: &str) -> Result<Option<String>, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ctx.err(path, format!("expected a string, got {}", kind(other)))),
    }
}

fn get_map(ctx: &Ctx, m: &Mapping, key: &str, path: &str) -> Result<Option<Mapping>, ConfigError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(x)) => Ok(Some(x.clone())),
        Some(other) => Err(ctx.err(path, format!("expected a mapping, got {}", kind(other)))),
    }
}

fn playbook(ctx: &Ctx, m: &Mapping, key: &str) -> Result<Option<Playbook>, ConfigError> {
    playbook_at(ctx, m, key, &format!("mechanism.ansible.{key}"))
}

/// A `{playbook, extra-vars}` map under `key` of `m`; errors name `path`.
fn playbook_at(
    ctx: &Ctx,
    m: &Mapping,
    key: &str,
    path: &str,
) -> Result<Option<Playbook>, ConfigError> {
    let Some(pb) = get_map(ctx, m, key, path)? else {
        return Ok(None);
    };
    for k in pb.keys() {
        let k = key_text(k);
        if k != "playbook" && k != "extra-vars" {
            return Err(ctx.err(
                &format!("{path}.{k}"),
                "unknown key, expected playbook or extra-vars",
            ));
        }
    }
    let Some(playbook) = get_str(ctx, &pb, "playbook", &format!("{path}.playbook"))? else {
        return Err(ctx.err(&format!("{path}.playbook"), "required: the playbook to run"));
    };
    let extra_vars =
        get_map(ctx, &pb, "extra-vars", &format!("{path}.extra-vars"))?.unwrap_or_default();
    Ok(Some(Playbook {
        playbook,
        extra_vars,
    }))
}

fn mechanism(ctx: &Ctx, vars: &Mapping, concrete: bool) -> Result<Option<Mechanism>, ConfigError> {
    // Upstream's model makes every level optional (`mechanism`, `type`, `ansible`,
    // `provision`); a concrete pool lacking one loads with an empty mechanism, the CLI warns
    // and the scheduler reports "pool P has no provision playbook" when it would fill it.
    let empty = || {
        concrete.then(|| Mechanism {
            topdir: None,
            extra_vars: Mapping::new(),
            provision: None,
            deprovision: None,
            reconcile: None,
        })
    };
    let Some(mech) = get_map(ctx, vars, "mechanism", "mechanism")? else {
        return Ok(empty());
    };
    for k in mech.keys() {
        let k = key_text(k);
        if k != "type" && k != "ansible" {
            return Err(ctx.err(
                &format!("mechanism.{k}"),
                "unknown key, expected type or ansible",
            ));
        }
    }
    match get_str(ctx, &mech, "type", "mechanism.type")?.as_deref() {
        // `ansible` is the only mechanism there is: a pool that leaves `type` out means it
        Some("ansible") | None => {}
        Some(other) => {
            return Err(ctx.err("mechanism.type", format!("expected ansible, got {other:?}")))
        }
    }
    let Some(ans) = get_map(ctx, &mech, "ansible", "mechanism.ansible")? else {
        return Ok(empty());
    };
    for k in ans.keys() {
        let k = key_text(k);
        if k == "reconcile" {
            // upstream's model closes `mechanism`: a key of duffy's own there would make
            // upstream refuse a configuration both run on
            return Err(ctx.err(
                "mechanism.ansible.reconcile",
                "duffy's reconcile playbook is the pool key `reconcile: {playbook: …}` (upstream refuses unknown keys under mechanism)",
            ));
        }
        if !["topdir", "extra-vars", "provision", "deprovision"].contains(&k.as_str()) {
            return Err(ctx.err(
                &format!("mechanism.ansible.{k}"),
                "unknown key, expected topdir, extra-vars, provision or deprovision",
            ));
        }
    }
    let topdir = get_str(ctx, &ans, "topdir", "mechanism.ansible.topdir")?.map(PathBuf::from);
    let extra_vars =
        get_map(ctx, &ans, "extra-vars", "mechanism.ansible.extra-vars")?.unwrap_or_default();
    let provision = playbook(ctx, &ans, "provision")?;
    let deprovision = playbook(ctx, &ans, "deprovision")?;
    // duffy's own key, at the pool's level (see above); run from the mechanism's topdir
    let reconcile = playbook_at(ctx, vars, "reconcile", "reconcile")?;
    if !concrete && provision.is_none() {
        return Ok(None);
    }
    Ok(Some(Mechanism {
        topdir,
        extra_vars,
        provision,
        deprovision,
        reconcile,
    }))
}

fn typed(ctx: &Ctx, name: &str, kind_: PoolKind, vars: Mapping) -> Result<Pool, ConfigError> {
    let concrete = kind_ == PoolKind::Concrete;
    // lax: upstream's Pydantic takes "3", 3.0 and true (= 1) too
    let fill_level = match vars.get("fill-level") {
        None | Some(Value::Null) => None,
        Some(v) if lax::int(v).is_some_and(|n| n > 0 && n <= i64::from(u32::MAX)) => {
            lax::int(v).map(|n| n as u32)
        }
        Some(other) => {
            return Err(ctx.err(
                "fill-level",
                format!("expected an integer > 0, got {}", show(other)),
            ))
        }
    };
    let reuse_nodes = match vars.get("reuse-nodes") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Mapping(m)) => {
            let mut typed = Mapping::new();
            for (k, v) in m {
                match v {
                    Value::String(_) => {}
                    Value::Number(n) if n.is_i64() || n.is_u64() => {}
                    // lax: upstream's `Union[int, str]` takes true/false (1/0) and 2.0 (2)
                    Value::Bool(_) | Value::Number(_) if lax::int(v).is_some() => {
                        typed.insert(k.clone(), Value::from(lax::int(v).unwrap_or_default()));
                        continue;
                    }
                    other => {
                        return Err(ctx.err(
                            &format!("reuse-nodes.{}", key_text(k)),
                            format!(
                                "expected a string (template) or an integer, got {}",
                                kind(other)
                            ),
                        ))
                    }
                }
                typed.insert(k.clone(), v.clone());
            }
            Some(typed)
        }
        Some(other) => {
            return Err(ctx.err(
                "reuse-nodes",
                format!(
                    "expected false or a mapping of node data keys, got {}",
                    kind(other)
                ),
            ))
        }
    };
    let run_parallel = match vars.get("run-parallel") {
        None | Some(Value::Null) => true,
        // lax: upstream's Pydantic takes yes/no, on/off, "true", 1/0, …
        Some(v) => match lax::bool(v) {
            Some(b) => b,
            None => {
                return Err(ctx.err(
                    "run-parallel",
                    format!("expected a boolean, got {}", show(v)),
                ))
            }
        },
    };
    let contextualize = match vars.get("contextualize") {
        None | Some(Value::Null) => Contextualize::Ssh,
        Some(Value::String(s)) if s == "ssh" => Contextualize::Ssh,
        Some(Value::String(s)) if s == "none" => Contextualize::None,
        Some(other) => {
            return Err(ctx.err(
                "contextualize",
                format!("expected ssh or none, got {}", show(other)),
            ))
        }
    };
    let mechanism = mechanism(ctx, &vars, concrete)?;
    // a concrete pool without fill-level is valid (upstream bug 11 fixed): never filled, not
    // listed; the CLI warns about it once logging is set up.
    Ok(Pool {
        name: name.to_string(),
        kind: kind_,
        vars,
        fill_level,
        reuse_nodes,
        run_parallel,
        mechanism,
        contextualize,
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        other => kind(other).to_string(),
    }
}

/// One pool as written: its own keys and the pool it extends.
struct Def {
    kind: PoolKind,
    name: String,
    path: String,
    own: Mapping,
    parent: Option<String>,
}

/// The merged map of `defs[i]` (its parents' chain deep-merged, then its own keys).
fn resolve_one(
    raw: &RawConfig,
    defs: &[Def],
    i: usize,
    merged: &mut Vec<Option<Mapping>>,
    chain: &mut Vec<usize>,
) -> Result<Mapping, ConfigError> {
    if let Some(m) = &merged[i] {
        return Ok(m.clone());
    }
    let d = &defs[i];
    let ctx = Ctx {
        raw,
        path: d.path.clone(),
    };
    let mut vars = match &d.parent {
        None => Mapping::new(),
        Some(parent) => {
            let Some(j) = defs.iter().position(|p| &p.name == parent) else {
                return Err(ctx.err("extends", format!("unknown pool {parent:?}")));
            };
            if j == i || chain.contains(&j) {
                return Err(ctx.err(
                    "extends",
                    format!("pool {parent:?} leads back to this pool (a cycle)"),
                ));
            }
            chain.push(i);
            let v = resolve_one(raw, defs, j, merged, chain)?;
            chain.pop();
            v
        }
    };
    vars.remove("name");
    deep_merge(&mut vars, d.own.clone(), "", &mut |_| {}).map_err(|(k, m)| ctx.err(&k, m))?;
    vars.insert(Value::from("name"), Value::from(d.name.clone()));
    merged[i] = Some(vars.clone());
    Ok(vars)
}

/// Resolve `nodepools` into pools in config order (sections as they appear, pools in order).
pub fn resolve(raw: &RawConfig) -> Result<Vec<Pool>, ConfigError> {
    let Some(np) = raw.value.get("nodepools") else {
        return Ok(vec![]);
    };
    let np = match np {
        Value::Null => return Ok(vec![]),
        Value::Mapping(m) => m,
        other => {
            return Err(raw.invalid(
                "nodepools",
                format!("expected a mapping, got {}", kind(other)),
            ))
        }
    };
    let mut defs: Vec<Def> = Vec::new();
    for (section, pools) in np {
        let section = key_text(section);
        let kind_ = match section.as_str() {
            "abstract" => PoolKind::Abstract,
            "concrete" => PoolKind::Concrete,
            _ => {
                return Err(raw.invalid(
                    &format!("nodepools.{section}"),
                    "unknown key, expected abstract or concrete",
                ))
            }
        };
        let pools = match pools {
            Value::Null => continue,
            Value::Mapping(m) => m,
            other => {
                return Err(raw.invalid(
                    &format!("nodepools.{section}"),
                    format!("expected a mapping of pool names, got {}", kind(other)),
                ))
            }
        };
        for (name, def) in pools {
            let name = key_text(name);
            let path = format!("nodepools.{section}.{name}");
            let ctx = Ctx { raw, path };
            if defs.iter().any(|d| d.name == name) {
                return Err(ctx.err("", "pool defined twice (pool names are global)"));
            }
            let mut own = match def {
                Value::Null => Mapping::new(),
                Value::Mapping(m) => m.clone(),
                other => {
                    return Err(ctx.err("", format!("expected a mapping, got {}", kind(other))))
                }
            };
            let parent = match own.remove("extends") {
                None | Some(Value::Null) => None,
                Some(Value::String(parent)) => Some(parent),
                Some(other) => {
                    return Err(ctx.err(
                        "extends",
                        format!("expected a pool name, got {}", kind(&other)),
                    ))
                }
            };
            defs.push(Def {
                kind: kind_,
                name,
                path: ctx.path,
                own,
                parent,
            });
        }
    }
    // `extends` may name a pool defined anywhere (upstream's check accepts a later one)
    let mut merged: Vec<Option<Mapping>> = vec![None; defs.len()];
    let mut out = Vec::with_capacity(defs.len());
    for i in 0..defs.len() {
        let vars = resolve_one(raw, &defs, i, &mut merged, &mut Vec::new())?;
        let d = &defs[i];
        let ctx = Ctx {
            raw,
            path: d.path.clone(),
        };
        out.push(typed(&ctx, &d.name, d.kind, vars)?);
    }
    Ok(out)
}
