//! `duffy_node`: declare the nodes of pools and move them through the one state machine.
//!
//! A node is found by `hostname` among the non-retired rows. Missing: it is created (for
//! `present` in `initial_state`, default `unused`; else in the state asked, which must be
//! `unused`, `ready` or `failed`). `present` never moves an existing node: declarations stay
//! idempotent while the node lives its life (ready → deployed → …). Present: its columns are
//! brought to the given values (`data` keys are merged; a key set to null is removed) and, when
//! `state` names a state, the node is moved there by **one** transition of
//! [`crate::state::TRANSITIONS`] as [`Actor::Operator`] through [`nodes::transition_exact`]. A
//! move the table does not allow is refused, naming the moves that are allowed. `absent`
//! retires the node (`done` + `retired_at`), which the table allows from `unused`, `failed` and
//! `deprovisioning`. Everything happens in one transaction, after every check.

use std::net::IpAddr;

use anyhow::{anyhow, bail};
use serde_json::{json, Map, Value};

use super::{actor, Dflt, Duffy, Failure, Module, Opt, Outcome, Run, Spec, Type};
use crate::db::nodes::{self, NewNode, Node, NodeChanges, NodeUpdate, TransitionRequest};
use crate::db::{self, audit};
use crate::events::{self, Event};
use crate::secrets::{self, Redact};
use crate::state::{self, Actor, NodeState};
use crate::timefmt;

/// Node states `state` may name (besides `present`/`absent`).
const TARGET_STATES: [NodeState; 6] = [
    NodeState::Unused,
    NodeState::Provisioning,
    NodeState::Ready,
    NodeState::Failed,
    NodeState::Deprovisioning,
    NodeState::Done,
];

const STATES: [&str; 8] = [
    "present",
    "absent",
    TARGET_STATES[0].as_str(),
    TARGET_STATES[1].as_str(),
    TARGET_STATES[2].as_str(),
    TARGET_STATES[3].as_str(),
    TARGET_STATES[4].as_str(),
    TARGET_STATES[5].as_str(),
];

const OPTIONS: &[Opt] = &[
    super::OPT_CONFIG,
    super::OPT_DATABASE_URL,
    Opt::str("hostname").required().aliases(&["name"]),
    Opt::str("ipaddr"),
    Opt::str("pool"),
    Opt::bool("reusable"),
    Opt::str("comment"),
    Opt::new("data", Type::Dict),
    Opt::str("state")
        .choices(&STATES)
        .default(Dflt::Str("present")),
    Opt::str("reason"),
    Opt::str("initial_state").choices(&[
        CREATE_STATES[0].as_str(),
        CREATE_STATES[1].as_str(),
        CREATE_STATES[2].as_str(),
    ]),
    Opt::new("from_states", Type::List)
        .elements(Type::Str)
        .choices(&NodeState::NAMES),
];

pub const MODULE: Module = Module {
    name: "duffy_node",
    spec: Spec::new(OPTIONS),
    run,
};

/// States a node may be created in.
const CREATE_STATES: [NodeState; 3] = [NodeState::Unused, NodeState::Ready, NodeState::Failed];

/// `data` as the module shows it: the values of secret-named keys masked
/// ([`secrets::redact`]), so that a diff still shows that a secret is set.
fn masked_data(d: &Value) -> Value {
    secrets::redacted(d, Redact::Mask(super::MASK))
}

/// The node as shown in `diff` and returned in `node`.
pub(crate) fn view(n: &Node) -> Value {
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "ipaddr": n.ipaddr,
        "pool": n.pool,
        "state": n.state,
        "reusable": n.reusable,
        "comment": n.comment,
        "data": masked_data(&n.data),
        "created_at": timefmt::iso_z(&n.created_at),
        "retired_at": n.retired_at.as_ref().map(timefmt::iso_z),
    })
}

/// Merge the `data` option into `cur`: keys set, keys with null removed (order kept).
fn merge_data(cur: &Value, given: &Map<String, Value>) -> Value {
    let mut m = cur.as_object().cloned().unwrap_or_default();
    for (k, v) in given {
        if v.is_null() {
            m.shift_remove(k);
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

fn ipaddr(run: &Run) -> anyhow::Result<Option<String>> {
    match run.params.str("ipaddr") {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<IpAddr>()
            .map(|ip| Some(ip.to_string()))
            .map_err(|_| anyhow!("ipaddr: {s:?} is not an IPv4 or IPv6 address")),
    }
}

/// The column changes the options ask for on `n`.
/// The state `wanted` asks for (None: keep it) and whether it retires the node.
fn desired(wanted: &str) -> Result<(Option<NodeState>, bool), state::StateError> {
    Ok(match wanted {
        "present" => (None, false),
        "absent" => (Some(NodeState::Done), true),
        s => (Some(s.parse::<NodeState>()?), false),
    })
}

/// Nothing to change on `n` (columns, state, retirement)?
fn up_to_date(run: &Run, n: &Node, ip: &Option<String>, wanted: &str) -> anyhow::Result<bool> {
    let (fields, _) = column_changes(run, n, ip);
    let (to, retire) = desired(wanted)?;
    let to = to.filter(|t| *t != n.state);
    Ok(fields.is_empty() && to.is_none() && !(retire && n.retired_at.is_none()))
}

fn column_changes(run: &Run, n: &Node, ip: &Option<String>) -> (Vec<&'static str>, NodeUpdate) {
    let p = &run.params;
    let mut fields = Vec::new();
    let mut u = NodeUpdate::default();
    if let Some(ip) = ip {
        if n.ipaddr.as_deref() != Some(ip) {
            fields.push("ipaddr");
            u.ipaddr = Some(Some(ip.clone()));
        }
    }
    if let Some(pool) = p.str("pool") {
        if n.pool.as_deref() != Some(pool) {
            fields.push("pool");
            u.pool = Some(Some(pool.to_string()));
        }
    }
    if let Some(c) = p.str("comment") {
        if n.comment.as_deref() != Some(c) {
            fields.push("comment");
            u.comment = Some(Some(c.to_string()));
        }
    }
    if let Some(r) = p.bool("reusable") {
        if r != n.reusable {
            fields.push("reusable");
            u.reusable = Some(r);
        }
    }
    if let Some(d) = p.dict("data") {
        let merged = merge_data(&n.data, d);
        if merged != n.data {
            fields.push("data");
            u.data = Some(merged);
        }
    }
    (fields, u)
}

/// `n` with `u` applied and moved to `to` (check mode's prediction, and the diff's `after`).
fn predicted(n: &Node, u: &NodeUpdate, to: Option<NodeState>, retire: bool) -> Value {
    let mut v = view(n);
    if let Some(ip) = &u.ipaddr {
        v["ipaddr"] = json!(ip);
    }
    if let Some(p) = &u.pool {
        v["pool"] = json!(p);
    }
    if let Some(c) = &u.comment {
        v["comment"] = json!(c);
    }
    if let Some(r) = u.reusable {
        v["reusable"] = json!(r);
    }
    if let Some(d) = &u.data {
        v["data"] = masked_data(d);
    }
    if let Some(s) = to {
        v["state"] = json!(s);
    }
    if retire && n.retired_at.is_none() {
        v["retired_at"] = json!("(now)");
    }
    v
}

/// Why a state change is refused, and what the operator may do from here.
fn refusal(n: &Node, name: &str, wanted: &str, to: NodeState, err: state::StateError) -> Failure {
    let allowed: Vec<String> = state::TRANSITIONS
        .iter()
        .filter(|t| t.from == n.state && t.by.contains(&Actor::Operator))
        .map(|t| format!("{} ({})", t.to, t.why))
        .collect();
    let hint = if allowed.is_empty() {
        format!(
            "no operator transition leaves {}{}",
            n.state,
            match n.state {
                NodeState::Contextualizing | NodeState::Deployed =>
                    " (the node belongs to a session: retire the session, or mark the node failed)",
                NodeState::Done => " (done is terminal)",
                _ => "",
            }
        )
    } else {
        format!(
            "from {} an operator may move it to: {}",
            n.state,
            allowed.join(", ")
        )
    };
    let extra = if wanted == "absent" {
        " — state: absent retires nodes that are unused, failed or deprovisioning (to done)"
    } else {
        ""
    };
    Failure::new(format!(
        "cannot set node {name} (id {}) to state {wanted}: {err}; {hint}{extra}",
        n.id
    ))
    .with("node", view(n))
    .with("transition", json!({"from": n.state, "to": to}))
}

fn run(run: &mut Run) -> anyhow::Result<Outcome> {
    let p = &run.params;
    let name = p.str("hostname").unwrap_or_default().to_string();
    if name.trim().is_empty() {
        bail!("hostname: must not be empty");
    }
    let wanted = p.str("state").unwrap_or("present").to_string();
    let ip = ipaddr(run)?;
    if let Some(d) = run.params.get("data") {
        // the runtime masks them wherever they appear (the echoed `invocation` too)
        let mut found = Vec::new();
        secrets::secret_values(d, &mut found);
        found.into_iter().for_each(|s| run.secret(s));
    }
    let reason = run
        .params
        .str("reason")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} state={wanted}", run.module));
    let who = actor(run);
    let header = format!("node {name}");
    db::block_on(async {
        let duffy = Duffy::open(run).await?;
        let mut conn = duffy.db.get().await?;
        // the common, idempotent case first, without a transaction: one query when nothing is
        // to be done (the change path below reads again, under the row lock)
        if let [n] = nodes::find_active_by_hostname(&**conn, &name)
            .await?
            .as_slice()
        {
            if up_to_date(run, n, &ip, &wanted)? {
                return Ok(
                    Outcome::new(false, format!("node {name} is up to date")).with("node", view(n))
                );
            }
        }
        let tx = conn.transaction().await?;
        let found = nodes::find_active_by_hostname(&*tx, &name).await?;
        if found.len() > 1 {
            let list: Vec<String> = found
                .iter()
                .map(|n| format!("id {} ({})", n.id, n.state))
                .collect();
            return Err(Failure::new(format!(
                "several non-retired nodes are named {name}: {}; retire the extra ones first",
                list.join(", ")
            ))
            .into());
        }
        let cur = match found.first() {
            Some(n) => nodes::get_for_update(&*tx, n.id).await?,
            None => None,
        };
        let Some(n) = cur else {
            // no such node
            if matches!(wanted.as_str(), "absent" | "done") {
                return Ok(Outcome::new(false, format!("node {name} is absent")));
            }
            let initial = run.params.str("initial_state").unwrap_or("unused");
            let st = if wanted == "present" {
                initial.parse::<NodeState>()?
            } else {
                wanted.parse::<NodeState>()?
            };
            if !CREATE_STATES.contains(&st) {
                return Err(Failure::new(format!(
                    "node {name} does not exist, and a new node can only be created as unused, ready or failed (not {st})"
                ))
                .into());
            }
            let data = run
                .params
                .dict("data")
                .map(|d| merge_data(&json!({}), d))
                .unwrap_or_else(|| json!({}));
            let new = NewNode {
                hostname: Some(name.clone()),
                ipaddr: ip.clone(),
                pool: run.params.str("pool").map(str::to_string),
                reusable: run.params.bool("reusable").unwrap_or(true),
                comment: run.params.str("comment").map(str::to_string),
                data: Some(data.clone()),
            };
            let after = json!({
                "hostname": new.hostname, "ipaddr": new.ipaddr, "pool": new.pool,
                "state": st, "reusable": new.reusable, "comment": new.comment,
                "data": masked_data(&data),
            });
            if run.check_mode {
                return Ok(
                    Outcome::new(true, format!("node {name} would be created ({st})")).diff(
                        header,
                        json!({}),
                        after,
                    ),
                );
            }
            let node = match nodes::insert(&*tx, &new, st, Actor::Operator, &reason).await {
                Ok(n) => n,
                Err(e) if e.unique_violation().is_some() => {
                    return Err(Failure::new(format!(
                        "cannot create node {name}: another non-retired node already has this hostname or ipaddr ({})",
                        e.unique_violation().unwrap_or_default()
                    ))
                    .into())
                }
                Err(e) => return Err(e.into()),
            };
            audit::record(
                &*tx,
                audit::Entity::Node,
                Some(node.id),
                "create",
                &who,
                json!({"hostname": node.hostname, "pool": node.pool, "state": node.state}),
            )
            .await?;
            tx.commit().await?;
            return Ok(Outcome::new(true, format!("node {name} created ({st})"))
                .diff(header, json!({}), view(&node))
                .with("node", view(&node)));
        };

        // an existing node: columns, then the state
        let (mut fields, mut u) = column_changes(run, &n, &ip);
        let (to, retire) = desired(&wanted)?;
        let to = to.filter(|t| *t != n.state);
        if let Some(t) = to {
            // checked on the row as locked by this transaction: no allocation can slip in
            // between this check and the change
            if let Some(from) = run.params.list("from_states") {
                let allowed: Vec<&str> = from.iter().filter_map(|v| v.as_str()).collect();
                if !allowed.contains(&n.state.as_str()) {
                    return Err(Failure::new(format!(
                        "node {name} (id {}) is {}, not one of from_states [{}]: not changed to {t}",
                        n.id,
                        n.state,
                        allowed.join(", ")
                    ))
                    .with("node", view(&n))
                    .into());
                }
            }
            if let Err(e) = state::check(n.state, t, Actor::Operator) {
                return Err(refusal(&n, &name, &wanted, t, e).into());
            }
            fields.push("state");
        } else if retire && n.retired_at.is_none() {
            // already done but not retired
            u.retire = true;
            fields.push("retired_at");
        }
        if fields.is_empty() {
            return Ok(
                Outcome::new(false, format!("node {name} is up to date")).with("node", view(&n))
            );
        }
        let before = view(&n);
        let after = predicted(&n, &u, to, retire);
        let what = fields.join(", ");
        if run.check_mode {
            return Ok(
                Outcome::new(true, format!("node {name} would be changed: {what}"))
                    .diff(header, before, after)
                    .with("node", view(&n)),
            );
        }
        if !u.is_empty() {
            let res = nodes::update_columns(&*tx, n.id, &u).await;
            match res {
                Ok(_) => {}
                Err(e) if e.unique_violation().is_some() => {
                    return Err(Failure::new(format!(
                        "cannot change node {name}: another non-retired node already has this ipaddr ({})",
                        e.unique_violation().unwrap_or_default()
                    ))
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
            let changed: Vec<&str> = fields.iter().copied().filter(|f| *f != "state").collect();
            audit::record(
                &*tx,
                audit::Entity::Node,
                Some(n.id),
                "update",
                &who,
                json!({ "fields": changed }),
            )
            .await?;
        }
        if let Some(t) = to {
            nodes::transition_exact(
                &*tx,
                &TransitionRequest {
                    node_ids: &[n.id],
                    from: &[n.state],
                    to: t,
                    actor: Actor::Operator,
                    reason: Some(&reason),
                    session_id: None,
                    changes: NodeChanges {
                        retire,
                        ..Default::default()
                    },
                },
            )
            .await?;
            // wake the scheduler: a node to deprovision, or a pool below its level
            let pools: Vec<String> = n.pool.iter().cloned().collect();
            events::notify(
                &*tx,
                &duffy.cfg.events.channel,
                &Event::NodesChanged {
                    node_ids: vec![n.id],
                    pools,
                },
            )
            .await?;
        }
        let node = nodes::get(&*tx, n.id)
            .await?
            .ok_or_else(|| anyhow!("node {} vanished", n.id))?;
        tx.commit().await?;
        let msg = if retire {
            format!("node {name} retired (done)")
        } else {
            format!("node {name} changed: {what}")
        };
        Ok(Outcome::new(true, msg)
            .diff(header, before, view(&node))
            .with("node", view(&node)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_merge() {
        let cur = json!({"a": 1, "b": 2, "bmc_password": "x"});
        let given = json!({"b": null, "c": 3}).as_object().unwrap().clone();
        assert_eq!(
            merge_data(&cur, &given),
            json!({"a": 1, "bmc_password": "x", "c": 3})
        );
    }
}
