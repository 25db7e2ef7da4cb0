//! Deprovisioning (compat spec §9.3, §8.5).
//!
//! Nodes of retired sessions are `deprovisioning` (the API or expiry moved them; their `pool` is
//! kept until they are done). A sweep queues one deprovision job per node (`run-parallel`) or per
//! pool for the nodes that no open job covers; nodes whose pool is not configured become
//! `failed` at once. The job removes tenant keys over SSH (pools with SSH contextualization,
//! result ignored), runs the pool's deprovision playbook with no transaction open, and matches
//! `duffy_out.nodes` to the nodes' `data.provision`: matched reusable nodes → `unused` (`pool`
//! NULL, `error`/`nodes_spec`/`provision` dropped), matched others → `done` + `retired_at`;
//! unmatched → `failed`. A pool without a deprovision playbook deprovisions successfully (bug 9).
//! A failing playbook is retried with back-off (nodes stay `deprovisioning`) and after
//! `max-attempts` the nodes become `failed` ("deprovisioning mechanism failed").

use serde_json::{json, Value as Json};

use super::{playbook, Outcome, Report, Scheduler, SchedulerError};
use crate::config::Contextualize;
use crate::db::jobs::{self, Job, JobKind};
use crate::db::nodes::{self, Node, NodeChanges, TransitionRequest};
use crate::db::sessions;
use crate::state::{Actor, NodeState};

/// Queue deprovision jobs for `deprovisioning` nodes without one.
pub async fn enqueue(s: &Scheduler) -> Result<Report, SchedulerError> {
    let mut r = Report::default();
    let mut conn = s.db.get().await?;
    let tx = conn.transaction().await?;
    jobs::lock(&*tx, "deprovision").await?;
    let todo = jobs::deprovisioning_without_job(&*tx).await?;
    if todo.is_empty() {
        return Ok(r);
    }
    let mut by_pool: Vec<(String, Vec<i32>)> = Vec::new();
    let now = sessions::now_utc(&*tx).await?;
    for (id, pool) in todo {
        let known = pool
            .as_deref()
            .and_then(|p| s.cfg.pool(p))
            .filter(|p| p.mechanism.is_some());
        match (known, pool) {
            (Some(p), _) => match by_pool.iter_mut().find(|(q, _)| *q == p.name) {
                Some((_, v)) => v.push(id),
                None => by_pool.push((p.name.clone(), vec![id])),
            },
            (None, pool) => {
                let detail = format!(
                    "deprovisioning node failed, pool '{}' not found",
                    pool.unwrap_or_default()
                );
                nodes::transition(
                    &*tx,
                    &TransitionRequest::failure(
                        &[id],
                        &[NodeState::Deprovisioning],
                        Actor::Scheduler,
                        &detail,
                        now,
                    ),
                )
                .await?;
                tracing::error!(node = id, "{detail}");
            }
        }
    }
    for (pool, ids) in by_pool {
        let parallel = s.cfg.pool(&pool).is_some_and(|p| p.run_parallel);
        let groups: Vec<Vec<i32>> = if parallel {
            ids.iter().map(|i| vec![*i]).collect()
        } else {
            vec![ids]
        };
        for g in groups {
            let id = jobs::enqueue(&*tx, JobKind::Deprovision, &pool, &g).await?;
            tracing::info!(%pool, job = id, nodes = ?g, "deprovision job queued");
            r.jobs_queued += 1;
        }
    }
    tx.commit().await?;
    Ok(r)
}

/// Does result object `res` match node `n` (every key equal in `data.provision`)?
fn matches(res: &Json, n: &Node) -> bool {
    let (Some(r), Some(p)) = (
        res.as_object(),
        n.data.get("provision").and_then(Json::as_object),
    ) else {
        return false;
    };
    !r.is_empty() && r.iter().all(|(k, v)| p.get(k) == Some(v))
}

/// Run a deprovision job.
pub async fn run_deprovision(s: &Scheduler, job: &Job) -> Result<Outcome, SchedulerError> {
    let nodes: Vec<Node> = {
        let c = s.db.get().await?;
        jobs::nodes_by_ids(&**c, &job.node_ids)
            .await?
            .into_iter()
            .filter(|n| n.state == NodeState::Deprovisioning && n.retired_at.is_none())
            .collect()
    };
    let pool = s
        .cfg
        .pool(&job.pool)
        .filter(|p| p.mechanism.is_some())
        .cloned();
    if nodes.is_empty() {
        return s.finish_without_nodes(job).await;
    }
    let ids: Vec<i32> = nodes.iter().map(|n| n.id).collect();
    let Some(pool) = pool else {
        let reason = format!("deprovisioning node failed, pool '{}' not found", job.pool);
        return conclude(s, job, &[], &[], &ids, &reason, true).await;
    };
    if s.exhausted(job) {
        let reason = format!(
            "deprovisioning mechanism failed: interrupted {} times{}",
            job.attempts - 1,
            job.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        return conclude(s, job, &[], &[], &ids, &reason, true).await;
    }
    if pool.contextualize == Contextualize::Ssh {
        let ips: Vec<String> = nodes.iter().filter_map(|n| n.ipaddr.clone()).collect();
        for f in crate::contextualize::remove(&s.cfg.contextualize, &ips).await {
            tracing::info!(job = job.id, ipaddr = %f.ipaddr, "removing tenant keys failed (ignored): {}", f.reason);
        }
    }
    let mech = pool.mechanism.as_ref().expect("checked");
    let Some(pb) = &mech.deprovision else {
        // no deprovision playbook: nothing to tear down (upstream fails every node: bug 9)
        return conclude(s, job, &nodes, &ids, &[], "", false).await;
    };
    let duffy_in = json!({"nodes": nodes.iter().map(|n| json!({"id": n.id, "hostname": n.hostname, "ipaddr": n.ipaddr, "data": n.data})).collect::<Vec<_>>()});
    let result = match playbook::extra_vars(&pool, pb, &duffy_in) {
        Err(e) => Err(e),
        Ok(vars) => {
            s.run_playbook(job, &pool, &pb.playbook, &vars, &ids)
                .await?
        }
    };
    match result {
        Err(reason) => {
            let last = job.attempts >= s.cfg.scheduler.max_attempts.max(1) as i32;
            if last {
                let reason = format!("deprovisioning mechanism failed: {reason}");
                conclude(s, job, &[], &[], &ids, &reason, true).await
            } else {
                // nodes stay deprovisioning until the retry
                let mut conn = s.db.get().await?;
                let tx = conn.transaction().await?;
                let o = s.retry_or_give_up(&*tx, job, &ids, &reason).await?;
                if o != Outcome::Lost {
                    tx.commit().await?;
                }
                Ok(o)
            }
        }
        Ok(out) => {
            let results: Vec<Json> = out
                .as_ref()
                .and_then(|o| o.get("nodes"))
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let mut matched: Vec<i32> = Vec::new();
            for res in &results {
                match nodes
                    .iter()
                    .find(|n| !matched.contains(&n.id) && matches(res, n))
                {
                    Some(n) => matched.push(n.id),
                    None => {
                        tracing::warn!(job = job.id, result = %res, "deprovision result matches no node")
                    }
                }
            }
            let unmatched: Vec<i32> = ids
                .iter()
                .copied()
                .filter(|i| !matched.contains(i))
                .collect();
            let ok_nodes: Vec<Node> = nodes
                .iter()
                .filter(|n| matched.contains(&n.id))
                .cloned()
                .collect();
            conclude(
                s,
                job,
                &ok_nodes,
                &matched,
                &unmatched,
                "deprovisioning node failed: no matching result in duffy_out",
                false,
            )
            .await
        }
    }
}

/// Apply the outcome in one transaction: `ok` nodes → unused/done, `bad` → failed; the job is
/// done (or failed when `job_failed`).
async fn conclude(
    s: &Scheduler,
    job: &Job,
    ok: &[Node],
    ok_ids: &[i32],
    bad: &[i32],
    reason: &str,
    job_failed: bool,
) -> Result<Outcome, SchedulerError> {
    let mut conn = s.db.get().await?;
    let tx = conn.transaction().await?;
    let now = sessions::now_utc(&*tx).await?;
    let reusable: Vec<i32> = ok.iter().filter(|n| n.reusable).map(|n| n.id).collect();
    let ephemeral: Vec<i32> = ok.iter().filter(|n| !n.reusable).map(|n| n.id).collect();
    debug_assert_eq!(ok_ids.len(), ok.len());
    if !reusable.is_empty() {
        nodes::transition(
            &*tx,
            &TransitionRequest {
                node_ids: &reusable,
                from: &[NodeState::Deprovisioning],
                to: NodeState::Unused,
                actor: Actor::Scheduler,
                reason: Some("reusable node torn down"),
                session_id: None,
                changes: NodeChanges {
                    pool: Some(None),
                    data_remove: vec!["error".into(), "nodes_spec".into(), "provision".into()],
                    ..Default::default()
                },
            },
        )
        .await?;
    }
    if !ephemeral.is_empty() {
        nodes::transition(
            &*tx,
            &TransitionRequest {
                node_ids: &ephemeral,
                from: &[NodeState::Deprovisioning],
                to: NodeState::Done,
                actor: Actor::Scheduler,
                reason: Some("node torn down"),
                session_id: None,
                changes: NodeChanges {
                    pool: Some(None),
                    retire: true,
                    ..Default::default()
                },
            },
        )
        .await?;
    }
    if !bad.is_empty() {
        nodes::transition(
            &*tx,
            &TransitionRequest::failure(
                bad,
                &[NodeState::Deprovisioning],
                Actor::Scheduler,
                reason,
                now,
            ),
        )
        .await?;
        tracing::error!(job = job.id, nodes = ?bad, "{reason}");
    }
    let (ok_job, outcome, action) = if job_failed {
        (
            jobs::give_up(&*tx, job.id, &s.owner, reason).await?,
            Outcome::Failed,
            "job-failed",
        )
    } else {
        (
            jobs::finish(&*tx, job.id, &s.owner).await?,
            Outcome::Done,
            "job-done",
        )
    };
    if !ok_job {
        return Ok(Outcome::Lost);
    }
    s.audit(
        &*tx,
        job,
        action,
        json!({"unused": reusable, "done": ephemeral, "failed": bad, "error": (!bad.is_empty()).then_some(reason)}),
    )
    .await?;
    tx.commit().await?;
    for id in &reusable {
        tracing::info!(job = job.id, node = id, "reusable node back to unused");
    }
    for id in &ephemeral {
        tracing::info!(job = job.id, node = id, "node done");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i32, data: Json) -> Node {
        Node {
            id,
            hostname: None,
            ipaddr: None,
            state: NodeState::Deprovisioning,
            comment: None,
            pool: Some("p".into()),
            reusable: false,
            data,
            created_at: chrono::NaiveDateTime::default(),
            retired_at: None,
        }
    }

    #[test]
    fn results_match_a_subset_of_the_provision_data() {
        let n = node(1, json!({"provision": {"ipaddr": "10.0.0.1", "id": "i-1"}}));
        assert!(matches(&json!({"ipaddr": "10.0.0.1"}), &n));
        assert!(matches(&json!({"ipaddr": "10.0.0.1", "id": "i-1"}), &n));
        assert!(!matches(&json!({"ipaddr": "10.0.0.2"}), &n));
        // upstream's echo of duffy_in (keys not in data.provision) never matches
        assert!(!matches(&json!({"id": 1, "ipaddr": "10.0.0.1"}), &n));
        assert!(!matches(&json!({}), &n));
        assert!(!matches(
            &json!({"ipaddr": "10.0.0.1"}),
            &node(2, json!({}))
        ));
    }
}
