//! Filling pools and provisioning nodes (compat spec §9.2, §8.4).
//!
//! **Fill** (one transaction per pool, under a per-pool advisory lock so concurrent schedulers
//! never both fill one pool): count = non-retired `ready` + `provisioning` nodes of the pool (plus
//! `failed` ones an open job will retry); for the missing ones either take matching unused
//! reusable nodes (`reuse-nodes`, `unused → provisioning`) or insert `provisioning` rows, and
//! queue provision jobs (one per node with `run-parallel`, else one). A pool whose provision jobs
//! keep giving up is paused with an exponential back-off (bug 13), not retried every pass.
//!
//! **Provision job**: nodes `failed → provisioning` again on a retry; the playbook runs with no
//! transaction open; results are matched to the nodes *by position in id order* (bug 7): an entry
//! with `ipaddr` makes the node `ready` (`hostname` — the IP when missing —, `ipaddr`,
//! `data.provision`); nodes without one, or all nodes when the playbook fails, become `failed`
//! with the reason, and the job is retried for them with back-off up to `max-attempts`.

use serde_json::{json, Map, Value as Json};

use super::{playbook, Outcome, Report, Scheduler, SchedulerError};
use crate::config::Pool;
use crate::db::jobs::{self, Job, JobKind};
use crate::db::nodes::{self, NewNode, NodeChanges, TransitionRequest};
use crate::db::{sessions, GenericClient};
use crate::state::{Actor, NodeState};

/// Fill every concrete pool that has a fill level and a mechanism.
pub async fn fill_all(s: &Scheduler) -> Result<Report, SchedulerError> {
    let mut r = Report::default();
    for pool in s.cfg.concrete_pools() {
        if pool.fill_level.is_none() || pool.mechanism.is_none() || !s.selected(&pool.name) {
            continue;
        }
        match fill_pool(s, pool).await {
            Ok(n) => r.jobs_queued += n,
            // one broken pool (e.g. a bad reuse-nodes template) must not stop the others
            Err(SchedulerError::Other(e)) => tracing::error!(pool = %pool.name, "fill: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(r)
}

/// The `reuse-nodes` mapping rendered to `data key → text` (§8.2).
fn reuse_match(pool: &Pool, reuse: &serde_yaml::Mapping) -> Result<Json, SchedulerError> {
    let ctx =
        serde_json::to_value(serde_yaml::Value::Mapping(pool.vars.clone())).unwrap_or(Json::Null);
    let mut m = Map::new();
    for (k, v) in reuse {
        let key = match k {
            serde_yaml::Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        };
        let text = match v {
            serde_yaml::Value::String(t) => crate::jinja::render(t, &ctx).map_err(|e| {
                SchedulerError::Other(format!("reuse-nodes.{key}: template {t:?}: {e}"))
            })?,
            serde_yaml::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                return Err(SchedulerError::Other(format!(
                    "reuse-nodes.{key}: expected a string or an integer, got {other:?}"
                )))
            }
        };
        m.insert(key, Json::String(text));
    }
    Ok(Json::Object(m))
}

/// Seconds a pool stays paused after `failures` consecutive given-up provision jobs.
fn pool_pause_secs(s: &Scheduler, failures: i64) -> f64 {
    if failures <= 0 {
        return 0.0;
    }
    let base = s.cfg.scheduler.fill_interval.0.as_secs_f64().max(1.0);
    (base * 2f64.powi((failures - 1).min(10) as i32)).min(86_400.0)
}

/// Fill one pool; returns the number of jobs queued.
pub async fn fill_pool(s: &Scheduler, pool: &Pool) -> Result<usize, SchedulerError> {
    let Some(level) = pool.fill_level else {
        return Ok(0);
    };
    let mut conn = s.db.get().await?;
    let tx = conn.transaction().await?;
    jobs::lock_pool_fill(&*tx, &pool.name).await?;
    let current = jobs::fill_count(&*tx, &pool.name).await?;
    let need = i64::from(level) - current;
    if need <= 0 {
        return Ok(0);
    }
    if pool
        .mechanism
        .as_ref()
        .is_none_or(|m| m.provision.is_none())
    {
        // upstream loads such a pool too (and fails with a KeyError when it fills it)
        let mut reported = s
            .no_provision_reported
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !reported.contains(&pool.name) {
            tracing::warn!(pool = %pool.name, level, current, "pool {} has no provision playbook (mechanism.ansible.provision.playbook): not filled", pool.name);
            reported.push(pool.name.clone());
        }
        return Ok(0);
    }
    let (failures, since) = jobs::pool_failures(&*tx, &pool.name).await?;
    let pause = pool_pause_secs(s, failures);
    if failures > 0 && since.unwrap_or(f64::MAX) < pause {
        tracing::debug!(pool = %pool.name, failures, "pool paused after failed provisioning");
        return Ok(0);
    }
    let ids: Vec<i32> = match &pool.reuse_nodes {
        Some(reuse) => {
            let matching = reuse_match(pool, reuse)?;
            let ids = jobs::reusable_candidates(&*tx, &matching, need).await?;
            if ids.is_empty() {
                return Ok(0);
            }
            nodes::transition_exact(
                &*tx,
                &TransitionRequest {
                    node_ids: &ids,
                    from: &[NodeState::Unused],
                    to: NodeState::Provisioning,
                    actor: Actor::Scheduler,
                    reason: Some("fill: reusable node taken into the pool"),
                    session_id: None,
                    changes: NodeChanges {
                        pool: Some(Some(pool.name.clone())),
                        ..Default::default()
                    },
                },
            )
            .await?;
            ids
        }
        None => {
            let mut ids = Vec::new();
            for _ in 0..need {
                let n = nodes::insert(
                    &*tx,
                    &NewNode {
                        pool: Some(pool.name.clone()),
                        ..Default::default()
                    },
                    NodeState::Provisioning,
                    Actor::Scheduler,
                    "fill: new node",
                )
                .await?;
                ids.push(n.id);
            }
            ids
        }
    };
    let groups: Vec<Vec<i32>> = if pool.run_parallel {
        ids.iter().map(|i| vec![*i]).collect()
    } else {
        vec![ids.clone()]
    };
    for g in &groups {
        let id = jobs::enqueue(&*tx, JobKind::Provision, &pool.name, g).await?;
        tracing::info!(pool = %pool.name, job = id, nodes = ?g, "provision job queued");
    }
    crate::db::audit::record(
        &*tx,
        crate::db::audit::Entity::Pool,
        None,
        "fill",
        "scheduler",
        json!({"pool": pool.name, "level": level, "current": current, "nodes": ids}),
    )
    .await?;
    tx.commit().await?;
    Ok(groups.len())
}

/// Mark `ids` (provisioning) failed with `reason`, then retry the job or give up.
async fn fail_nodes(
    s: &Scheduler,
    job: &Job,
    failed: &[(i32, String)],
) -> Result<Outcome, SchedulerError> {
    let mut conn = s.db.get().await?;
    let tx = conn.transaction().await?;
    let now = sessions::now_utc(&*tx).await?;
    let last = s.exhausted(job) || job.attempts >= s.cfg.scheduler.max_attempts.max(1) as i32;
    for (id, reason) in failed {
        let why = if last {
            format!(
                "provisioning failed, giving up after {} attempts: {reason}",
                job.attempts
            )
        } else {
            format!("provisioning failed (attempt {}): {reason}", job.attempts)
        };
        nodes::transition(
            &*tx,
            &TransitionRequest::failure(
                &[*id],
                &[NodeState::Provisioning],
                Actor::Scheduler,
                &why,
                now,
            ),
        )
        .await?;
    }
    let ids: Vec<i32> = failed.iter().map(|(i, _)| *i).collect();
    let reason = failed.first().map(|(_, r)| r.clone()).unwrap_or_default();
    let o = s.retry_or_give_up(&*tx, job, &ids, &reason).await?;
    if o == Outcome::Lost {
        // our lease is gone: another scheduler owns the job, leave the nodes to it
        return Ok(Outcome::Lost);
    }
    tx.commit().await?;
    Ok(o)
}

/// The result for position `i` of `duffy_out` (§8.4): an object with a valid `ipaddr` (an IPv4
/// or IPv6 address) and, optionally, a valid `hostname` (a DNS name; the address when
/// missing). `Ok((entry, hostname, ipaddr))`, or why the node cannot be made ready, naming the
/// field: a playbook's output never reaches the nodes table unchecked.
fn result_entry(
    out: &Option<Json>,
    i: usize,
) -> Result<(&Map<String, Json>, String, String), String> {
    let no_result = || format!("no usable result (with ipaddr) at duffy_out.nodes[{i}]");
    let e = out
        .as_ref()
        .and_then(|o| o.get("nodes"))
        .and_then(Json::as_array)
        .and_then(|a| a.get(i))
        .and_then(Json::as_object)
        .ok_or_else(no_result)?;
    let ipaddr = e
        .get("ipaddr")
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(no_result)?;
    let shown = |v: &str| {
        v.chars()
            .take(60)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    if ipaddr.parse::<std::net::IpAddr>().is_err() {
        return Err(format!(
            "duffy_out.nodes[{i}].ipaddr: not an IP address: \"{}\"",
            shown(ipaddr)
        ));
    }
    let hostname = match e.get("hostname") {
        None | Some(Json::Null) => ipaddr,
        Some(Json::String(h)) if h.is_empty() => ipaddr,
        Some(Json::String(h)) if is_host_name(h) => h.as_str(),
        Some(other) => {
            let t = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_string);
            return Err(format!(
                "duffy_out.nodes[{i}].hostname: not a host name: \"{}\"",
                shown(&t)
            ));
        }
    };
    Ok((e, hostname.to_string(), ipaddr.to_string()))
}

/// A DNS host name (letters, digits, `-` and `_` in dot-separated labels of at most 63
/// characters, 253 in all; a trailing dot allowed) or an IP address.
fn is_host_name(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Run a provision job.
pub async fn run_provision(s: &Scheduler, job: &Job) -> Result<Outcome, SchedulerError> {
    let pool = s
        .cfg
        .pool(&job.pool)
        .filter(|p| p.mechanism.is_some())
        .cloned();
    // nodes back to provisioning (a retry), then load them in id order
    let nodes = {
        let mut conn = s.db.get().await?;
        let tx = conn.transaction().await?;
        if pool.is_some() && !s.exhausted(job) {
            nodes::transition(
                &*tx,
                &TransitionRequest {
                    node_ids: &job.node_ids,
                    from: &[NodeState::Failed],
                    to: NodeState::Provisioning,
                    actor: Actor::Scheduler,
                    reason: Some(&format!("retry after failure (attempt {})", job.attempts)),
                    session_id: None,
                    changes: NodeChanges {
                        data_remove: vec!["error".into()],
                        ..Default::default()
                    },
                },
            )
            .await?;
        }
        let nodes: Vec<_> = jobs::nodes_by_ids(&*tx, &job.node_ids)
            .await?
            .into_iter()
            .filter(|n| {
                n.state == NodeState::Provisioning
                    && n.retired_at.is_none()
                    && n.pool.as_deref() == Some(job.pool.as_str())
            })
            .collect();
        tx.commit().await?;
        nodes
    };
    if nodes.is_empty() {
        return s.finish_without_nodes(job).await;
    }
    let ids: Vec<i32> = nodes.iter().map(|n| n.id).collect();
    let Some(pool) = pool else {
        let reason = format!("pool '{}' not found in the configuration", job.pool);
        let failed: Vec<(i32, String)> = ids.iter().map(|i| (*i, reason.clone())).collect();
        return give_up_now(s, job, &failed).await;
    };
    if s.exhausted(job) {
        let reason = format!(
            "interrupted {} times (scheduler killed mid-run?){}",
            job.attempts - 1,
            job.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
        let failed: Vec<(i32, String)> = ids.iter().map(|i| (*i, reason.clone())).collect();
        return fail_nodes(s, job, &failed).await;
    }
    let Some(pb) = pool.mechanism.as_ref().and_then(|m| m.provision.as_ref()) else {
        // a job from before the playbook was taken out of the config (or a crashed upstream
        // worker's nodes): nothing can provision them
        let reason = format!("pool {} has no provision playbook", job.pool);
        let failed: Vec<(i32, String)> = ids.iter().map(|i| (*i, reason.clone())).collect();
        return give_up_now(s, job, &failed).await;
    };
    let duffy_in = json!({"nodes": nodes.iter().map(|n| json!({"id": n.id, "hostname": n.hostname, "ipaddr": n.ipaddr})).collect::<Vec<_>>()});
    let result = match playbook::extra_vars(&pool, pb, &duffy_in) {
        Err(e) => Err(e),
        Ok(vars) => {
            s.run_playbook(job, &pool, &pb.playbook, &vars, &ids)
                .await?
        }
    };
    let out = match result {
        Ok(out) => out,
        Err(reason) => {
            let failed: Vec<(i32, String)> = ids.iter().map(|i| (*i, reason.clone())).collect();
            return fail_nodes(s, job, &failed).await;
        }
    };
    let mut failed = Vec::new();
    let mut ready = Vec::new();
    {
        let c = s.db.get().await?;
        for (i, n) in nodes.iter().enumerate() {
            let (e, hostname, ipaddr) = match result_entry(&out, i) {
                Ok(r) => r,
                Err(reason) => {
                    failed.push((n.id, reason));
                    continue;
                }
            };
            // one statement per node: a duplicate hostname/ipaddr fails only that node
            let moved = nodes::transition(
                &**c,
                &TransitionRequest {
                    node_ids: &[n.id],
                    from: &[NodeState::Provisioning],
                    to: NodeState::Ready,
                    actor: Actor::Scheduler,
                    reason: Some("provision playbook succeeded"),
                    session_id: None,
                    changes: NodeChanges {
                        hostname: Some(Some(hostname.clone())),
                        ipaddr: Some(Some(ipaddr.clone())),
                        data_merge: Some(json!({"provision": Json::Object(e.clone())})),
                        data_remove: vec!["error".into()],
                        ..Default::default()
                    },
                },
            )
            .await;
            match moved {
                Ok(m) if !m.is_empty() => {
                    tracing::info!(job = job.id, node = n.id, %hostname, %ipaddr, "node ready");
                    ready.push(n.id);
                }
                Ok(_) => tracing::warn!(job = job.id, node = n.id, "node changed state meanwhile"),
                Err(e) if e.unique_violation().is_some() => failed.push((
                    n.id,
                    format!("hostname {hostname} or ipaddr {ipaddr} already in use"),
                )),
                Err(e) => return Err(e.into()),
            }
        }
    }
    s.provisioned
        .fetch_add(ready.len(), std::sync::atomic::Ordering::Relaxed);
    if !failed.is_empty() {
        return fail_nodes(s, job, &failed).await;
    }
    let c = s.db.get().await?;
    if !jobs::finish(&**c, job.id, &s.owner).await? {
        return Ok(Outcome::Lost);
    }
    s.audit(&**c, job, "job-done", json!({"nodes": ready}))
        .await?;
    Ok(Outcome::Done)
}

/// Fail the nodes and the job at once (no retry can help).
async fn give_up_now(
    s: &Scheduler,
    job: &Job,
    failed: &[(i32, String)],
) -> Result<Outcome, SchedulerError> {
    let mut conn = s.db.get().await?;
    let tx = conn.transaction().await?;
    let now = sessions::now_utc(&*tx).await?;
    for (id, reason) in failed {
        nodes::transition(
            &*tx,
            &TransitionRequest::failure(
                &[*id],
                &[NodeState::Provisioning],
                Actor::Scheduler,
                reason,
                now,
            ),
        )
        .await?;
    }
    let reason = failed.first().map(|(_, r)| r.clone()).unwrap_or_default();
    if !jobs::give_up(&*tx, job.id, &s.owner, &reason).await? {
        return Ok(Outcome::Lost);
    }
    s.audit(&*tx, job, "job-failed", json!({"error": reason}))
        .await?;
    tx.commit().await?;
    Ok(Outcome::Failed)
}

/// For tests and tools: a pool's fill count as the scheduler sees it.
pub async fn fill_count(c: &impl GenericClient, pool: &str) -> Result<i64, SchedulerError> {
    Ok(jobs::fill_count(c, pool).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_nodes_templates_and_integers() {
        let vars: serde_yaml::Mapping =
            serde_yaml::from_str("{name: p, architecture: aarch64}").unwrap();
        let pool = Pool {
            name: "p".into(),
            kind: crate::config::PoolKind::Concrete,
            vars,
            fill_level: Some(1),
            reuse_nodes: None,
            run_parallel: true,
            mechanism: None,
            contextualize: crate::config::Contextualize::None,
        };
        let m: serde_yaml::Mapping =
            serde_yaml::from_str("{architecture: '{{ architecture }}', cores: 8}").unwrap();
        assert_eq!(
            reuse_match(&pool, &m).unwrap(),
            json!({"architecture": "aarch64", "cores": "8"})
        );
        let bad: serde_yaml::Mapping = serde_yaml::from_str("{x: [1]}").unwrap();
        assert!(reuse_match(&pool, &bad)
            .unwrap_err()
            .to_string()
            .contains("reuse-nodes.x"));
    }

    #[test]
    fn only_entries_with_an_ipaddr_are_usable() {
        let out = Some(
            json!({"nodes": [{"ipaddr": "10.0.0.1"}, {"hostname": "x"}, {"ipaddr": ""}, "str"]}),
        );
        let r = result_entry(&out, 0).unwrap();
        assert_eq!((r.1.as_str(), r.2.as_str()), ("10.0.0.1", "10.0.0.1"));
        for i in 1..5 {
            assert!(result_entry(&out, i)
                .unwrap_err()
                .starts_with("no usable result"));
        }
        assert!(result_entry(&None, 0).is_err());
        assert!(result_entry(&Some(json!({"nodes": {}})), 0).is_err());
    }

    #[test]
    fn playbook_addresses_and_names_are_validated_naming_the_field() {
        let out = Some(json!({"nodes": [
            {"ipaddr": "fd00::7", "hostname": "n7.ec2.internal"},
            {"ipaddr": "10.0.0.1; rm -rf /"},
            {"ipaddr": "10.0.0.1", "hostname": "bad host\u{0}"},
            {"ipaddr": "10.0.0.1", "hostname": 42},
            {"ipaddr": "256.1.1.1"},
            {"ipaddr": "10.0.0.2", "hostname": "ip-10-0-0-2.ec2.internal."},
            {"ipaddr": "10.0.0.3", "hostname": "-lead.example"},
        ]}));
        let r = result_entry(&out, 0).unwrap();
        assert_eq!((r.1.as_str(), r.2.as_str()), ("n7.ec2.internal", "fd00::7"));
        assert_eq!(
            result_entry(&out, 1).unwrap_err(),
            r#"duffy_out.nodes[1].ipaddr: not an IP address: "10.0.0.1; rm -rf /""#
        );
        assert_eq!(
            result_entry(&out, 2).unwrap_err(),
            r#"duffy_out.nodes[2].hostname: not a host name: "bad host\0""#
        );
        assert_eq!(
            result_entry(&out, 3).unwrap_err(),
            r#"duffy_out.nodes[3].hostname: not a host name: "42""#
        );
        assert!(result_entry(&out, 4)
            .unwrap_err()
            .contains(".ipaddr: not an IP"));
        assert_eq!(
            result_entry(&out, 5).unwrap().1,
            "ip-10-0-0-2.ec2.internal."
        );
        assert!(result_entry(&out, 6).unwrap_err().contains(".hostname:"));
    }
}
