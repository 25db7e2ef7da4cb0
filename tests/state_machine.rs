//! The node state machine on real PostgreSQL: illegal transitions refused without writing,
//! guarded transitions, audit rows, and concurrent writers (exactly one wins).
mod common;

use common::TestDb;
use duffy::db::nodes::{self, NewNode, NodeChanges, TransitionRequest};
use duffy::db::{Db, DbError};
use duffy::state::{self, Actor, NodeState, StateError};
use serde_json::json;

fn next_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("127.1.{}.{}", n / 250, n % 250 + 1)
}

async fn node(db: &Db, st: NodeState, host: &str) -> i32 {
    let c = db.get().await.unwrap();
    nodes::insert(
        &**c,
        &NewNode {
            hostname: Some(host.into()),
            ipaddr: Some(next_ip()),
            pool: Some("lab".into()),
            reusable: true,
            data: Some(json!({"architecture": "x86_64", "provision": {"id": 1}})),
            ..Default::default()
        },
        st,
        Actor::Operator,
        "test",
    )
    .await
    .unwrap()
    .id
}

fn req(ids: &[i32], from: &[NodeState], to: NodeState, actor: Actor) -> TransitionRequest<'static> {
    TransitionRequest {
        node_ids: Box::leak(ids.to_vec().into_boxed_slice()),
        from: Box::leak(from.to_vec().into_boxed_slice()),
        to,
        actor,
        reason: Some("test"),
        session_id: None,
        changes: NodeChanges::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_illegal_transition_is_refused_and_writes_nothing() {
    let t = TestDb::migrated();
    let db = t.db(2).await;
    let c = db.get().await.unwrap();
    let mut refused = 0;
    for from in NodeState::ALL {
        let id = node(&db, from, &format!("n-{from}")).await;
        for to in NodeState::ALL {
            for actor in [Actor::Api, Actor::Scheduler, Actor::Operator] {
                if state::check(from, to, actor).is_ok() {
                    continue;
                }
                let r = nodes::transition(&**c, &req(&[id], &[from], to, actor)).await;
                refused += 1;
                match r {
                    Err(DbError::State(
                        StateError::Illegal { .. } | StateError::NotAllowed { .. },
                    )) => {}
                    other => panic!("{from}->{to} by {actor:?}: expected refusal, got {other:?}"),
                }
                let n = nodes::get(&**c, id).await.unwrap().unwrap();
                assert_eq!(n.state, from, "{from}->{to} refused but state changed");
            }
        }
        // only the creation row in the history
        assert_eq!(nodes::history(&**c, id).await.unwrap().len(), 1);
    }
    // 8 states x 8 x 3 actors, minus the allowed (from, to, actor) triples
    let allowed: usize = state::TRANSITIONS.iter().map(|t| t.by.len()).sum();
    assert_eq!(refused, 8 * 8 * 3 - allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transition_applies_changes_and_records_history() {
    let t = TestDb::migrated();
    let db = t.db(2).await;
    let c = db.get().await.unwrap();
    let id = node(&db, NodeState::Deployed, "n1").await;
    let mut r = req(
        &[id],
        &[NodeState::Deployed],
        NodeState::Deprovisioning,
        Actor::Scheduler,
    );
    r.changes.pool = Some(None);
    r.session_id = Some(7);
    let moved = nodes::transition_exact(&**c, &r).await.unwrap();
    assert_eq!(
        moved,
        vec![nodes::Moved {
            id,
            from: NodeState::Deployed
        }]
    );
    let n = nodes::get(&**c, id).await.unwrap().unwrap();
    assert_eq!(
        (n.state, n.pool.as_deref()),
        (NodeState::Deprovisioning, None)
    );

    let mut r = req(
        &[id],
        &[NodeState::Deprovisioning],
        NodeState::Done,
        Actor::Scheduler,
    );
    r.changes.retire = true;
    r.changes.data_remove = vec!["provision".into()];
    r.changes.data_merge = Some(json!({"torn_down": true}));
    nodes::transition_exact(&**c, &r).await.unwrap();
    let n = nodes::get(&**c, id).await.unwrap().unwrap();
    assert_eq!(n.state, NodeState::Done);
    assert!(n.retired_at.is_some());
    assert_eq!(n.data, json!({"architecture": "x86_64", "torn_down": true}));

    let h = nodes::history(&**c, id).await.unwrap();
    let steps: Vec<_> = h.iter().map(|e| (e.from, e.to, e.actor.as_str())).collect();
    assert_eq!(
        steps,
        vec![
            (None, Some(NodeState::Deployed), "operator"),
            (
                Some(NodeState::Deployed),
                Some(NodeState::Deprovisioning),
                "scheduler"
            ),
            (
                Some(NodeState::Deprovisioning),
                Some(NodeState::Done),
                "scheduler"
            ),
        ]
    );
    assert_eq!(h[1].session_id, Some(7));

    // the guard: a node no longer in the expected state is not moved
    let e = nodes::transition_exact(
        &**c,
        &req(
            &[id],
            &[NodeState::Deprovisioning],
            NodeState::Unused,
            Actor::Scheduler,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, DbError::State(StateError::Conflict { current, .. }) if current == "done"),
        "{e}"
    );
    let e = nodes::transition_exact(
        &**c,
        &req(
            &[999_999],
            &[NodeState::Failed],
            NodeState::Unused,
            Actor::Operator,
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, DbError::State(StateError::NotFound(999_999))),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_append_only() {
    let t = TestDb::migrated();
    let db = t.db(1).await;
    node(&db, NodeState::Ready, "n-ao").await;
    let c = db.get().await.unwrap();
    assert!(c
        .execute("UPDATE duffy_node_history SET reason = 'x'", &[])
        .await
        .is_err());
    assert!(c
        .execute("DELETE FROM duffy_node_history", &[])
        .await
        .is_err());
}

/// Many concurrent writers race for the same nodes: each node is moved exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transitions_exactly_one_wins() {
    let t = TestDb::migrated();
    let db = t.db(12).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(node(&db, NodeState::Ready, &format!("race{i}")).await);
    }
    let mut tasks = Vec::new();
    for w in 0..10 {
        let db = db.clone();
        let mut ids = ids.clone();
        // different lock orders per writer
        if w % 2 == 1 {
            ids.reverse();
        }
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for chunk in ids.chunks(if w % 3 == 0 { 40 } else { 5 }) {
                let mut c = db.get().await.unwrap();
                let tx = c.transaction().await.unwrap();
                let moved = nodes::transition(
                    &*tx,
                    &req(
                        chunk,
                        &[NodeState::Ready],
                        NodeState::Contextualizing,
                        Actor::Api,
                    ),
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                won.extend(moved.into_iter().map(|m| m.id));
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all.len(), dedup.len(), "a node was moved twice");
    assert_eq!(dedup, {
        let mut s = ids.clone();
        s.sort();
        s
    });
    let c = db.get().await.unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM duffy_node_history WHERE to_state = 'contextualizing'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
}
