//! The node state machine — the one place that knows which state changes are allowed.
//!
//! States are upstream's (compat spec §1.4). Transitions are data ([`TRANSITIONS`]): who may make
//! them and why. The SQL that performs a transition (guarded on the current state, so two writers
//! can never both win, and writing an audit row) is [`crate::db::nodes::transition`], which
//! consults [`check`] first. Nothing else changes `nodes.state`.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use postgres_types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A node's state (`node_state_enum` in PostgreSQL).
///
/// On the wire it is its label, as `node_state_enum` or as text: the library's SQL passes and
/// reads states as text (`$1::text::node_state_enum`, `state::text`), so a fresh connection
/// never has to look the enum type up in the catalog (four extra round trips for a short-lived
/// module or CLI process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Unused,
    Provisioning,
    Ready,
    Contextualizing,
    Deployed,
    Deprovisioning,
    Done,
    Failed,
}

impl NodeState {
    pub const ALL: [NodeState; 8] = [
        NodeState::Unused,
        NodeState::Provisioning,
        NodeState::Ready,
        NodeState::Contextualizing,
        NodeState::Deployed,
        NodeState::Deprovisioning,
        NodeState::Done,
        NodeState::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            NodeState::Unused => "unused",
            NodeState::Provisioning => "provisioning",
            NodeState::Ready => "ready",
            NodeState::Contextualizing => "contextualizing",
            NodeState::Deployed => "deployed",
            NodeState::Deprovisioning => "deprovisioning",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
        }
    }

    /// The names of [`Self::ALL`], in that order (for `const` contexts such as module option
    /// choices and the OpenAPI enum).
    pub const NAMES: [&'static str; 8] = {
        let mut names = [""; 8];
        let mut i = 0;
        while i < Self::ALL.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    /// States counted in a pool's `levels` (compat spec §4.5).
    pub const LEVELS: [NodeState; 5] = [
        NodeState::Provisioning,
        NodeState::Ready,
        NodeState::Contextualizing,
        NodeState::Deployed,
        NodeState::Deprovisioning,
    ];
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, StateError> {
        NodeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StateError::UnknownState(s.to_string()))
    }
}

fn sql_type_ok(ty: &Type) -> bool {
    ty.name() == "node_state_enum" || <&str as FromSql>::accepts(ty)
}

impl<'a> FromSql<'a> for NodeState {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(std::str::from_utf8(raw)?.parse()?)
    }

    fn accepts(ty: &Type) -> bool {
        sql_type_ok(ty)
    }
}

impl ToSql for NodeState {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.as_str().as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        sql_type_ok(ty)
    }

    to_sql_checked!();
}

/// Who asks for a transition. Recorded in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// the REST API (allocation, contextualization, retirement)
    Api,
    /// the scheduler (fill, provision, deprovision, expiry, recovery)
    Scheduler,
    /// a human: `duffy admin`, Ansible modules
    Operator,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Api => "api",
            Actor::Scheduler => "scheduler",
            Actor::Operator => "operator",
        }
    }
}

/// One allowed transition.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub from: NodeState,
    pub to: NodeState,
    pub by: &'static [Actor],
    pub why: &'static str,
}

use Actor::{Api, Operator, Scheduler};
use NodeState::*;

const API: &[Actor] = &[Api];
const OPS: &[Actor] = &[Operator];
const SCHED_OPS: &[Actor] = &[Scheduler, Operator];
const ANY: &[Actor] = &[Api, Scheduler, Operator];

/// Every allowed transition (compat spec §2.1, plus the operator's ways out of `failed`).
pub const TRANSITIONS: &[Transition] = &[
    Transition {
        from: Unused,
        to: Provisioning,
        by: SCHED_OPS,
        why: "fill: reusable node taken into a pool",
    },
    Transition {
        from: Unused,
        to: Failed,
        by: OPS,
        why: "operator marks a spare node broken",
    },
    Transition {
        from: Unused,
        to: Done,
        by: OPS,
        why: "operator decommissions a spare node",
    },
    Transition {
        from: Provisioning,
        to: Ready,
        by: SCHED_OPS,
        why: "provision playbook succeeded",
    },
    Transition {
        from: Provisioning,
        to: Unused,
        by: SCHED_OPS,
        why: "provisioning of a reusable node gave no result",
    },
    Transition {
        from: Provisioning,
        to: Failed,
        by: SCHED_OPS,
        why: "provisioning failed or timed out",
    },
    Transition {
        from: Ready,
        to: Contextualizing,
        by: API,
        why: "allocated to a session",
    },
    Transition {
        from: Ready,
        to: Deprovisioning,
        by: SCHED_OPS,
        why: "pool drained or shrunk",
    },
    Transition {
        from: Ready,
        to: Failed,
        by: SCHED_OPS,
        why: "node found broken",
    },
    Transition {
        from: Contextualizing,
        to: Deployed,
        by: API,
        why: "tenant keys installed",
    },
    Transition {
        from: Contextualizing,
        to: Ready,
        by: ANY,
        why: "allocation rolled back",
    },
    Transition {
        from: Contextualizing,
        to: Failed,
        by: ANY,
        why: "contextualization failed",
    },
    Transition {
        from: Contextualizing,
        to: Deprovisioning,
        by: ANY,
        why: "session retired or expired while its tenant's keys were being installed: the \
              scheduler's teardown removes them",
    },
    Transition {
        from: Deployed,
        to: Deprovisioning,
        by: ANY,
        why: "session retired or expired",
    },
    Transition {
        from: Deployed,
        to: Failed,
        by: ANY,
        why: "node failed while deployed",
    },
    Transition {
        from: Deprovisioning,
        to: Unused,
        by: SCHED_OPS,
        why: "reusable node torn down",
    },
    Transition {
        from: Deprovisioning,
        to: Done,
        by: SCHED_OPS,
        why: "ephemeral node torn down",
    },
    Transition {
        from: Deprovisioning,
        to: Failed,
        by: SCHED_OPS,
        why: "deprovisioning failed",
    },
    Transition {
        from: Failed,
        to: Provisioning,
        by: SCHED_OPS,
        why: "retry after failure",
    },
    Transition {
        from: Failed,
        to: Unused,
        by: OPS,
        why: "operator repaired a reusable node",
    },
    Transition {
        from: Failed,
        to: Deprovisioning,
        by: OPS,
        why: "operator sends a failed node to teardown",
    },
    Transition {
        from: Failed,
        to: Done,
        by: OPS,
        why: "operator retires a failed node",
    },
];

/// Why a transition was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("unknown node state {0:?} (expected one of unused, provisioning, ready, contextualizing, deployed, deprovisioning, done, failed)")]
    UnknownState(String),
    #[error("illegal node state transition {from} -> {to}")]
    Illegal { from: NodeState, to: NodeState },
    #[error("node state transition {from} -> {to} is not allowed for the {actor}")]
    NotAllowed {
        from: NodeState,
        to: NodeState,
        actor: &'static str,
    },
    #[error("node {id} is {current}, not {expected} (changed concurrently?)")]
    Conflict {
        id: i32,
        expected: String,
        current: String,
    },
    #[error("node {0} not found")]
    NotFound(i32),
}

/// Look up the transition `from -> to`.
pub fn find(from: NodeState, to: NodeState) -> Option<&'static Transition> {
    TRANSITIONS.iter().find(|t| t.from == from && t.to == to)
}

/// May `actor` move a node from `from` to `to`?
pub fn check(
    from: NodeState,
    to: NodeState,
    actor: Actor,
) -> Result<&'static Transition, StateError> {
    let t = find(from, to).ok_or(StateError::Illegal { from, to })?;
    if !t.by.contains(&actor) {
        return Err(StateError::NotAllowed {
            from,
            to,
            actor: actor.as_str(),
        });
    }
    Ok(t)
}

/// States from which `actor` may reach `to`.
pub fn sources(to: NodeState, actor: Actor) -> Vec<NodeState> {
    TRANSITIONS
        .iter()
        .filter(|t| t.to == to && t.by.contains(&actor))
        .map(|t| t.from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates_and_done_is_terminal() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            for b in &TRANSITIONS[i + 1..] {
                assert!(
                    !(a.from == b.from && a.to == b.to),
                    "{:?}->{:?} twice",
                    a.from,
                    a.to
                );
            }
            assert_ne!(a.from, a.to);
            assert_ne!(a.from, Done, "done must be terminal");
        }
    }

    #[test]
    fn every_state_but_done_can_be_left() {
        for s in NodeState::ALL {
            if s != Done {
                assert!(TRANSITIONS.iter().any(|t| t.from == s), "{s} is a dead end");
            }
        }
    }

    #[test]
    fn failed_only_left_by_operator_or_scheduler_retry() {
        assert!(check(Failed, Unused, Operator).is_ok());
        assert!(matches!(
            check(Failed, Unused, Api),
            Err(StateError::NotAllowed { .. })
        ));
        assert!(matches!(
            check(Failed, Ready, Operator),
            Err(StateError::Illegal { .. })
        ));
        assert!(check(Failed, Provisioning, Scheduler).is_ok());
    }

    #[test]
    fn parse_and_print() {
        for s in NodeState::ALL {
            assert_eq!(s.as_str().parse::<NodeState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("Ready".parse::<NodeState>().is_err());
    }

    #[test]
    fn sources_of_contextualizing() {
        assert_eq!(sources(Contextualizing, Api), vec![Ready]);
        assert!(sources(Contextualizing, Scheduler).is_empty());
    }
}
