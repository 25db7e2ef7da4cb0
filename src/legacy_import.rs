//! `duffy import-legacy`: take over a Duffy v2 installation from its MariaDB.
//!
//! [`run`] reads v2 ([`crate::db::legacy::read`]), reads what duffy already has, makes a
//! [`Plan`] — one line per tenant, node and session, and every row it cannot take, by table and
//! id — and with `apply` writes it in **one** PostgreSQL transaction under an advisory lock,
//! through the domain code: tenants by [`crate::tenant::insert_in`] / `update_in` (names,
//! SSH keys and quotas validated by their rules, API keys stored as [`crate::apikey`] stores
//! them), nodes by [`crate::db::nodes::insert`] (history row), sessions and their node links,
//! an audit row for each. The dry run makes the same plan and writes nothing.
//!
//! Mapping (v2's names from its source: `duffy/models/nodes.py`, `api_v1/views.py`,
//! `scripts/worker.py`):
//! - `users` → tenants: `projectname` → name, `apikey` → API key, `limitnodes` → node quota;
//!   the project's `userkeys` rows → the tenant's SSH keys (one per line; an invalid key is
//!   reported by `userkeys.id` and left out; a project without a valid key is not imported).
//! - `stock` → nodes: the pool from `legacy-import.pools` (arch, rel, ver, flavor, v2 pool
//!   number), hostname, address, `reusable` from the rule; `chassis`, `console_port`,
//!   `used_count`, `comment`, `architecture` at the top of `data`, the rest under `data.v2`.
//!   States: `Ready` → ready, `Active` (off, available) → unused, `Provisioning` →
//!   provisioning, `Deprovision` → deprovisioning, `Failed`/`Fail` → failed, `Reserved` →
//!   failed (out of rotation, as in v2), the hosts of an imported active session → deployed;
//!   `Deployed`/`Contextualizing` without one → failed. Any other state is reported.
//! - `sessions` in `Prod`/`Fail` → active sessions (expiring one effective session lifetime
//!   after the import); other `sessions` rows and `session_archive` → retired sessions.
//!   Hosts come from `stock.session_id` and from `session_hosts`.
//!
//! Idempotence: nodes and sessions keep their v2 ids (`data.v2.stock_id`, `data.v2.id`) and
//! tenants their names, so a re-run finds them and changes nothing; rows added to v2 since are
//! imported, tenants get v2's current SSH keys and quota. What was imported is never changed
//! or removed by a re-run (duffy owns it from then on); differences are reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDateTime;
use serde::Serialize;
use serde_json::{json, Map, Value as Json};
use thiserror::Error;
use uuid::Uuid;

use crate::config::Config;
use crate::db::legacy::{self as v2, Text, V2Data, V2Error, V2Stock, V2Target};
use crate::db::nodes::{self, NewNode};
use crate::db::tenants::TenantRow;
use crate::db::{self, audit, Db, DbError, GenericClient};
use crate::state::{Actor, NodeState};
use crate::tenant::{self, NewTenant, Tenant, TenantError};
use crate::{apikey, sshkeys};

/// The actor recorded in audit rows and node history.
pub const ACTOR: &str = "import-legacy";

#[derive(Debug, Error)]
pub enum ImportError {
    #[error(transparent)]
    V2(#[from] V2Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Tenant(#[from] TenantError),
}

impl From<tokio_postgres::Error> for ImportError {
    fn from(e: tokio_postgres::Error) -> Self {
        ImportError::Db(e.into())
    }
}

/// What happens to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// new in duffy
    Create,
    /// already there; some of its values change
    Update,
    /// already there, nothing to do
    Unchanged,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One tenant of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLine {
    pub action: Action,
    pub name: String,
    /// duffy's id (known for existing tenants, and after `--apply`)
    pub id: Option<i32>,
    pub node_quota: Option<u32>,
    pub ssh_keys: usize,
    /// fields an update changes
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<&'static str>,
    #[serde(skip)]
    key: Uuid,
    #[serde(skip)]
    ssh_key: String,
}

/// One node of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLine {
    pub action: Action,
    pub stock_id: i64,
    pub hostname: String,
    pub pool: Option<String>,
    pub state: NodeState,
    pub id: Option<i32>,
    #[serde(skip)]
    ipaddr: Option<String>,
    #[serde(skip)]
    reusable: bool,
    #[serde(skip)]
    data: Json,
}

/// One session of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct SessionLine {
    pub action: Action,
    pub v2_id: String,
    pub tenant: String,
    pub active: bool,
    /// v2's state (`Prod`, `Fail`, `Done`, …)
    pub v2_state: Option<String>,
    pub hostnames: Vec<String>,
    pub id: Option<i32>,
    #[serde(skip)]
    stock_ids: Vec<i64>,
    #[serde(skip)]
    created_at: Option<NaiveDateTime>,
    #[serde(skip)]
    retired_at: Option<NaiveDateTime>,
    #[serde(skip)]
    data: Json,
}

/// A v2 row that is not imported (`skipped`) or imported with a remark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// the v2 table
    pub table: &'static str,
    /// the row's id there (`users`: the project name — its key is a secret)
    pub id: String,
    /// true: the row is not imported
    pub skipped: bool,
    pub message: String,
}

/// The whole plan and, after `--apply`, what was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub applied: bool,
    pub tenants: Vec<TenantLine>,
    pub nodes: Vec<NodeLine>,
    pub sessions: Vec<SessionLine>,
    pub problems: Vec<Problem>,
}

/// Counts of a plan by kind and action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
}

impl Plan {
    fn count<'a>(actions: impl Iterator<Item = &'a Action>) -> Counts {
        let mut c = Counts::default();
        for a in actions {
            match a {
                Action::Create => c.create += 1,
                Action::Update => c.update += 1,
                Action::Unchanged => c.unchanged += 1,
            }
        }
        c
    }

    /// (tenants, nodes, sessions) counts.
    pub fn counts(&self) -> (Counts, Counts, Counts) {
        (
            Self::count(self.tenants.iter().map(|t| &t.action)),
            Self::count(self.nodes.iter().map(|n| &n.action)),
            Self::count(self.sessions.iter().map(|s| &s.action)),
        )
    }

    /// The `--format json` document.
    pub fn to_json(&self) -> Json {
        let (t, n, s) = self.counts();
        json!({
            "applied": self.applied,
            "counts": {
                "tenants": t, "nodes": n, "sessions": s,
                "problems": self.problems.len(),
                "skipped": self.problems.iter().filter(|p| p.skipped).count(),
            },
            "tenants": self.tenants,
            "nodes": self.nodes,
            "sessions": self.sessions,
            "problems": self.problems,
        })
    }

    /// The text report: one line per tenant, node, session and problem, then the counts.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let id = |i: Option<i32>| i.map(|i| format!(" id={i}")).unwrap_or_default();
        for t in &self.tenants {
            out.push_str(&format!(
                "tenant  {:<9} {}{} quota={} ssh-keys={}{}\n",
                t.action.as_str(),
                t.name,
                id(t.id),
                t.node_quota
                    .map_or_else(|| "default".to_string(), |q| q.to_string()),
                t.ssh_keys,
                if t.changes.is_empty() {
                    String::new()
                } else {
                    format!(" changes={}", t.changes.join(","))
                }
            ));
        }
        for n in &self.nodes {
            out.push_str(&format!(
                "node    {:<9} stock={} {}{} pool={} state={}\n",
                n.action.as_str(),
                n.stock_id,
                n.hostname,
                id(n.id),
                n.pool.as_deref().unwrap_or("-"),
                n.state
            ));
        }
        for s in &self.sessions {
            out.push_str(&format!(
                "session {:<9} v2={} tenant={}{} {} nodes={}\n",
                s.action.as_str(),
                s.v2_id,
                s.tenant,
                id(s.id),
                if s.active { "active" } else { "retired" },
                if s.hostnames.is_empty() {
                    "-".to_string()
                } else {
                    s.hostnames.join(",")
                }
            ));
        }
        for p in &self.problems {
            out.push_str(&format!(
                "{} {} {}: {}\n",
                if p.skipped { "skipped" } else { "warning" },
                p.table,
                p.id,
                p.message
            ));
        }
        let (t, n, s) = self.counts();
        let c = |c: &Counts| {
            format!(
                "{} to create, {} to update, {} unchanged",
                c.create, c.update, c.unchanged
            )
        };
        out.push_str(&format!(
            "tenants: {}\nnodes: {}\nsessions: {}\nproblems: {} ({} rows skipped)\n",
            c(&t),
            c(&n),
            c(&s),
            self.problems.len(),
            self.problems.iter().filter(|p| p.skipped).count()
        ));
        out.push_str(if self.applied {
            "applied: written in one transaction\n"
        } else {
            "dry run: nothing written (--apply imports)\n"
        });
        out
    }

    fn problem(&mut self, table: &'static str, id: impl ToString, skipped: bool, msg: String) {
        self.problems.push(Problem {
            table,
            id: id.to_string(),
            skipped,
            message: msg,
        });
    }

    /// `metaclient.usermap` for the imported tenants (legacy key → tenant name): a config
    /// fragment. It holds API keys: write it only to a private file.
    pub fn usermap_yaml(&self) -> String {
        let mut s = String::from(
            "# written by `duffy import-legacy`: Duffy v2 API keys for the legacy cico API\nmetaclient:\n  usermap:\n",
        );
        for t in &self.tenants {
            s.push_str(&format!(
                "    \"{}\": {}\n",
                t.key.hyphenated(),
                serde_json::to_string(&t.name).expect("string")
            ));
        }
        s
    }
}

fn opt_text(t: &Option<Text>) -> Option<&str> {
    t.as_ref().map(|t| t.text.trim()).filter(|s| !s.is_empty())
}

/// v2 session states under which the tenant still holds the hosts (`/Node/done` accepts both).
const ACTIVE_SESSION_STATES: [&str; 2] = ["Prod", "Fail"];

/// A v2 host state → duffy's, for a host that no imported active session holds; `None`:
/// unknown. The second value explains a `failed` that v2 did not call failed.
fn node_state(v2_state: &str) -> Option<(NodeState, Option<&'static str>)> {
    Some(match v2_state.to_ascii_lowercase().as_str() {
        "ready" => (NodeState::Ready, None),
        "active" => (NodeState::Unused, None),
        "provisioning" => (NodeState::Provisioning, None),
        "deprovision" | "deprovisioning" => (NodeState::Deprovisioning, None),
        "failed" | "fail" => (NodeState::Failed, Some("failed in Duffy v2")),
        "reserved" => (
            NodeState::Failed,
            Some("reserved in Duffy v2 (out of rotation)"),
        ),
        "deployed" | "contextualizing" => (
            NodeState::Failed,
            Some("lent in Duffy v2 without an active session that could be imported"),
        ),
        _ => return None,
    })
}

/// Insert `(k, v)` into `m` when `v` is not null.
fn put(m: &mut Map<String, Json>, k: &str, v: Json) {
    if !v.is_null() {
        m.insert(k.to_string(), v);
    }
}

fn node_data(s: &V2Stock, error: Option<(&str, NaiveDateTime)>) -> Json {
    let t = |t: &Option<Text>| t.as_ref().map_or(Json::Null, |t| json!(t.text));
    let mut m = Map::new();
    put(&mut m, "architecture", t(&s.arch));
    put(&mut m, "chassis", t(&s.chassis));
    put(&mut m, "console_port", json!(s.console_port));
    put(&mut m, "used_count", json!(s.used_count));
    put(&mut m, "comment", t(&s.comment));
    let mut v = Map::new();
    v.insert("stock_id".into(), json!(s.id));
    put(&mut v, "state", t(&s.state));
    put(&mut v, "next_state", t(&s.next_state));
    put(&mut v, "distro", t(&s.distro));
    put(&mut v, "rel", t(&s.rel));
    put(&mut v, "ver", t(&s.ver));
    put(&mut v, "arch", t(&s.arch));
    put(&mut v, "flavor", t(&s.flavor));
    put(&mut v, "pool", json!(s.pool));
    put(&mut v, "session_id", t(&s.session_id));
    m.insert("v2".into(), Json::Object(v));
    if let Some((detail, now)) = error {
        if let Json::Object(e) = nodes::error_data(now, detail) {
            m.extend(e);
        }
    }
    Json::Object(m)
}

/// Report every text column of a row that was not UTF-8 (read as Latin-1).
fn latin1(plan: &mut Plan, table: &'static str, id: &str, cols: &[(&str, &Option<Text>)]) {
    for (name, t) in cols {
        if t.as_ref().is_some_and(|t| t.latin1) {
            plan.problem(
                table,
                id,
                false,
                format!("{name} is not valid UTF-8: read as Latin-1"),
            );
        }
    }
}

/// What duffy has already.
struct Current {
    tenants: HashMap<String, TenantRow>,
    nodes: HashMap<i64, v2::ImportedNode>,
    sessions: HashMap<String, v2::ImportedSession>,
    now: NaiveDateTime,
}

async fn current(c: &impl GenericClient) -> Result<Current, DbError> {
    Ok(Current {
        tenants: db::tenants::list(c, true)
            .await?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect(),
        nodes: v2::imported_nodes(c).await?,
        sessions: v2::imported_sessions(c).await?,
        now: db::sessions::now_utc(c).await?,
    })
}

/// bcrypt on the blocking pool, all at once (cost 12: ~0.3 s of CPU each).
async fn verify_all(pairs: Vec<(Uuid, String)>) -> Vec<bool> {
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|(k, h)| {
            tokio::task::spawn_blocking(move || apikey::verify(&k.hyphenated().to_string(), &h))
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or(false));
    }
    out
}

async fn hash_all(keys: Vec<Uuid>) -> Vec<String> {
    let tasks: Vec<_> = keys
        .into_iter()
        .map(|k| tokio::task::spawn_blocking(move || apikey::hash(&k)))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("bcrypt task"));
    }
    out
}

/// Make the plan from v2's rows and duffy's current state.
async fn make_plan(
    cfg: &Config,
    data: &V2Data,
    cur: &Current,
    c: &impl GenericClient,
) -> Result<Plan, ImportError> {
    let mut plan = Plan::default();

    // --- tenants ------------------------------------------------------------------------
    // userkeys by project (the project's API key)
    let mut keys: HashMap<&str, Vec<String>> = HashMap::new();
    let user_keys: HashSet<&str> = data
        .users
        .iter()
        .filter_map(|u| opt_text(&u.apikey))
        .collect();
    for k in &data.userkeys {
        let id = k.id.to_string();
        latin1(&mut plan, "userkeys", &id, &[("key", &k.key)]);
        let Some(project) = opt_text(&k.project_id).filter(|p| user_keys.contains(p)) else {
            plan.problem("userkeys", &id, true, "its project is not in users".into());
            continue;
        };
        match opt_text(&k.key).map(sshkeys::validate) {
            Some(Ok(valid)) => keys.entry(project).or_default().push(valid),
            Some(Err(e)) => plan.problem("userkeys", &id, true, format!("invalid SSH key: {e}")),
            None => plan.problem("userkeys", &id, true, "empty SSH key".into()),
        }
    }
    // oldest project first: of two projects with one name, the older keeps it
    let mut users: Vec<_> = data.users.iter().collect();
    users.sort_by_key(|u| u.createdat);
    // v2 API key → tenant name (imported or already there)
    let mut owner: HashMap<&str, String> = HashMap::new();
    // v2 API key → why its project is not imported
    let mut not_imported: HashMap<&str, String> = HashMap::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut existing = Vec::new(); // (line index, stored hash)
    for u in users {
        let name = opt_text(&u.projectname).unwrap_or("").to_string();
        let row_id = if name.is_empty() {
            format!(
                "(projectname empty, jobname {:?})",
                opt_text(&u.jobname).unwrap_or("")
            )
        } else {
            name.clone()
        };
        latin1(
            &mut plan,
            "users",
            &row_id,
            &[("projectname", &u.projectname)],
        );
        let Some(raw_key) = opt_text(&u.apikey) else {
            plan.problem("users", &row_id, true, "no apikey".into());
            continue;
        };
        let mut skip = |plan: &mut Plan, why: String| {
            plan.problem("users", &row_id, true, why.clone());
            not_imported.insert(raw_key, why);
        };
        // CI jobs send the key exactly as v2 stored it; duffy stores the canonical form
        let key = match apikey::parse(raw_key) {
            Some(k) if k.hyphenated().to_string() == raw_key => k,
            _ => {
                skip(
                    &mut plan,
                    "apikey is not a UUID in canonical form (lowercase, hyphenated)".into(),
                );
                continue;
            }
        };
        if let Err(e) = tenant::validate_name(&name) {
            skip(&mut plan, format!("projectname: {e}"));
            continue;
        }
        if !names.insert(name.clone()) {
            skip(
                &mut plan,
                "another project of this name was imported (duffy tenants have one API key)".into(),
            );
            continue;
        }
        let ssh_key = keys.get(raw_key).map(|k| k.join("\n")).unwrap_or_default();
        let ssh_keys = keys.get(raw_key).map_or(0, |k| {
            k.iter()
                .flat_map(|k| k.lines())
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count()
        });
        if ssh_keys == 0 {
            skip(
                &mut plan,
                "no valid SSH key in userkeys: add one in v2 and import again".into(),
            );
            continue;
        }
        let node_quota = match u.limitnodes {
            Some(n) if n > 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => {
                plan.problem(
                    "users",
                    &row_id,
                    false,
                    format!("limitnodes {n} is not > 0: the default node quota applies"),
                );
                None
            }
            None => None,
        };
        let new = NewTenant {
            name: name.clone(),
            ssh_key: ssh_key.clone(),
            node_quota,
            ..Default::default()
        };
        if let Err(e) = tenant::validate_new(&new) {
            skip(&mut plan, e.to_string());
            continue;
        }
        let line = TenantLine {
            action: Action::Create,
            name: name.clone(),
            id: None,
            node_quota,
            ssh_keys,
            changes: vec![],
            key,
            ssh_key,
        };
        if let Some(row) = cur.tenants.get(&name) {
            existing.push((plan.tenants.len(), row.api_key_hash.clone()));
        }
        owner.insert(raw_key, name);
        plan.tenants.push(line);
    }
    // tenants already in duffy: the same API key, or the name is someone else's
    let verified = verify_all(
        existing
            .iter()
            .map(|(i, h)| (plan.tenants[*i].key, h.clone()))
            .collect(),
    )
    .await;
    let mut drop_lines = HashSet::new();
    let mut retired: HashSet<String> = HashSet::new();
    for ((i, _), ok) in existing.iter().zip(verified) {
        let line = &mut plan.tenants[*i];
        let row = &cur.tenants[&line.name];
        if !ok {
            drop_lines.insert(*i);
            continue;
        }
        line.id = Some(row.id);
        if row.retired_at.is_some() {
            // a retired tenant is not updated (tenant::update's rule) and gets no new session
            line.action = Action::Unchanged;
            retired.insert(line.name.clone());
            plan.problems.push(Problem {
                table: "users",
                id: line.name.clone(),
                skipped: false,
                message: format!(
                    "tenant {} (id={}) is retired in duffy: left as it is, its new active sessions are not imported",
                    line.name, row.id
                ),
            });
            continue;
        }
        let stored = sshkeys::validate(&row.ssh_key).unwrap_or_default();
        if stored != line.ssh_key {
            line.changes.push("ssh_key");
        }
        if row.node_quota.map(|q| q.max(0) as u32) != line.node_quota {
            line.changes.push("node_quota");
        }
        line.action = if line.changes.is_empty() {
            Action::Unchanged
        } else {
            Action::Update
        };
    }
    if !drop_lines.is_empty() {
        let lines = std::mem::take(&mut plan.tenants);
        for (i, l) in lines.into_iter().enumerate() {
            if drop_lines.contains(&i) {
                let why = format!(
                    "tenant {:?} exists in duffy with another API key: not changed",
                    l.name
                );
                plan.problem("users", &l.name, true, why.clone());
                owner.retain(|_, n| *n != l.name);
                let k = data
                    .users
                    .iter()
                    .filter_map(|u| opt_text(&u.apikey))
                    .find(|k| apikey::parse(k) == Some(l.key));
                if let Some(k) = k {
                    not_imported.insert(k, why);
                }
            } else {
                plan.tenants.push(l);
            }
        }
    }

    plan.tenants.sort_by(|a, b| a.name.cmp(&b.name));

    // --- nodes: which stock rows can be imported at all ----------------------------------
    let hostnames: Vec<String> = data
        .stock
        .iter()
        .filter_map(|s| opt_text(&s.hostname).map(str::to_string))
        .collect();
    let ipaddrs: Vec<String> = data
        .stock
        .iter()
        .filter_map(|s| opt_text(&s.ip).map(str::to_string))
        .collect();
    let imported_ids: HashSet<i32> = cur.nodes.values().map(|n| n.id).collect();
    let taken: Vec<v2::TakenAddress> = v2::nodes_holding(c, &hostnames, &ipaddrs)
        .await?
        .into_iter()
        .filter(|t| !imported_ids.contains(&t.node_id))
        .collect();
    // stock id → (pool rule, hostname, ip) of rows that can be created
    let mut importable: BTreeMap<i64, (&crate::config::LegacyPoolRule, String, Option<String>)> =
        BTreeMap::new();
    let mut seen_host: HashSet<String> = HashSet::new();
    let mut seen_ip: HashSet<String> = HashSet::new();
    let mut by_hostname: HashMap<&str, &V2Stock> = HashMap::new();
    for s in &data.stock {
        let id = s.id.to_string();
        if let Some(h) = opt_text(&s.hostname) {
            by_hostname.entry(h).or_insert(s);
        }
        if cur.nodes.contains_key(&s.id) {
            continue;
        }
        latin1(
            &mut plan,
            "stock",
            &id,
            &[
                ("hostname", &s.hostname),
                ("chassis", &s.chassis),
                ("comment", &s.comment),
                ("arch", &s.arch),
                ("ver", &s.ver),
                ("flavor", &s.flavor),
            ],
        );
        let Some(hostname) = opt_text(&s.hostname) else {
            plan.problem("stock", &id, true, "no hostname".into());
            continue;
        };
        let ip = opt_text(&s.ip).map(str::to_string);
        let Some(rule) = cfg.legacy_import.rule_for(
            opt_text(&s.arch),
            opt_text(&s.rel),
            opt_text(&s.ver),
            opt_text(&s.flavor),
            s.pool,
        ) else {
            plan.problem(
                "stock",
                &id,
                true,
                format!(
                    "{hostname}: matches no rule of legacy-import.pools (arch={:?}, rel={:?}, ver={:?}, flavor={:?}, pool={})",
                    opt_text(&s.arch).unwrap_or(""),
                    opt_text(&s.rel).unwrap_or(""),
                    opt_text(&s.ver).unwrap_or(""),
                    opt_text(&s.flavor).unwrap_or(""),
                    s.pool.map_or("NULL".to_string(), |p| p.to_string())
                ),
            );
            continue;
        };
        if let Some(t) = taken
            .iter()
            .find(|t| t.hostname.as_deref() == Some(hostname) || (ip.is_some() && t.ipaddr == ip))
        {
            plan.problem(
                "stock",
                &id,
                true,
                format!(
                    "{hostname}: duffy's node {} already has this hostname or address",
                    t.node_id
                ),
            );
            continue;
        }
        if !seen_host.insert(hostname.to_string())
            || ip.as_ref().is_some_and(|ip| !seen_ip.insert(ip.clone()))
        {
            plan.problem(
                "stock",
                &id,
                true,
                format!("{hostname}: another stock row has this hostname or address"),
            );
            continue;
        }
        if node_state(opt_text(&s.state).unwrap_or("")).is_none() {
            plan.problem(
                "stock",
                &id,
                true,
                format!(
                    "{hostname}: unknown v2 state {:?}",
                    opt_text(&s.state).unwrap_or("")
                ),
            );
            continue;
        }
        importable.insert(s.id, (rule, hostname.to_string(), ip));
    }

    // --- sessions -------------------------------------------------------------------------
    let mut seen_sessions: HashSet<&str> = HashSet::new();
    // stock ids held by the active sessions to import
    let mut deployed: HashSet<i64> = HashSet::new();
    for s in &data.sessions {
        let v2_id = s.id.text.trim();
        // `sessions` comes first: a row also in the archive is the live one
        if v2_id.is_empty() || !seen_sessions.insert(v2_id) {
            continue;
        }
        let table = if s.archived {
            "session_archive"
        } else {
            "sessions"
        };
        let state = opt_text(&s.state).map(str::to_string);
        let active = !s.archived
            && ACTIVE_SESSION_STATES
                .iter()
                .any(|a| state.as_deref() == Some(*a));
        if let Some(done) = cur.sessions.get(v2_id) {
            if done.retired == active {
                plan.problem(
                    table,
                    v2_id,
                    false,
                    format!(
                        "imported earlier as session {} ({}), v2 has it {}: not changed",
                        done.id,
                        if done.retired { "retired" } else { "active" },
                        state.as_deref().unwrap_or("without a state")
                    ),
                );
            }
            let tenant = cur
                .tenants
                .values()
                .find(|t| t.id == done.tenant_id)
                .map_or_else(String::new, |t| t.name.clone());
            plan.sessions.push(SessionLine {
                action: Action::Unchanged,
                v2_id: v2_id.to_string(),
                tenant,
                active: !done.retired,
                v2_state: state,
                hostnames: vec![],
                id: Some(done.id),
                stock_ids: vec![],
                created_at: None,
                retired_at: None,
                data: Json::Null,
            });
            continue;
        }
        let key = opt_text(&s.apikey).unwrap_or("");
        let Some(tenant) = owner.get(key) else {
            let why = match not_imported.get(key) {
                Some(why) => format!("its project is not imported ({why})"),
                None => "its user is not in users".to_string(),
            };
            plan.problem(table, v2_id, true, why);
            continue;
        };
        if active && retired.contains(tenant) {
            plan.problem(
                table,
                v2_id,
                true,
                format!("its tenant {tenant} is retired in duffy"),
            );
            continue;
        }
        // hosts: stock.session_id (v2 since 2018) and session_hosts (before)
        let mut hosts: Vec<&V2Stock> = Vec::new();
        if active {
            hosts.extend(
                data.stock
                    .iter()
                    .filter(|st| opt_text(&st.session_id) == Some(v2_id)),
            );
        }
        for sh in data
            .session_hosts
            .iter()
            .filter(|h| h.ssid.text.trim() == v2_id)
        {
            if let Some(st) = by_hostname.get(sh.hostname.text.trim()) {
                if !hosts.iter().any(|h| h.id == st.id) {
                    hosts.push(st);
                }
            }
        }
        hosts.sort_by_key(|h| h.id);
        if active {
            if hosts.is_empty() {
                plan.problem(table, v2_id, true, "active in v2 but holds no host".into());
                continue;
            }
            if let Some(h) = hosts.iter().find(|h| !importable.contains_key(&h.id)) {
                let why = match cur.nodes.get(&h.id) {
                    Some(n) => format!(
                        "its host stock {} was imported earlier (node {}, {}): not imported",
                        h.id, n.id, n.state
                    ),
                    None => format!(
                        "its host stock {} cannot be imported (see stock {}): not imported",
                        h.id, h.id
                    ),
                };
                plan.problem(table, v2_id, true, why);
                continue;
            }
            if let Some(h) = hosts.iter().find(|h| deployed.contains(&h.id)) {
                plan.problem(
                    table,
                    v2_id,
                    true,
                    format!(
                        "its host stock {} is held by another active session: not imported",
                        h.id
                    ),
                );
                continue;
            }
            deployed.extend(hosts.iter().map(|h| h.id));
        } else {
            // history: link the hosts that are or will be in duffy
            hosts.retain(|h| importable.contains_key(&h.id) || cur.nodes.contains_key(&h.id));
        }
        let mut v = Map::new();
        v.insert("id".into(), json!(v2_id));
        put(&mut v, "state", json!(state));
        put(&mut v, "jobid", json!(opt_text(&s.jobid)));
        put(&mut v, "type", json!(opt_text(&s.kind)));
        put(&mut v, "table", json!(table));
        let retired_at = if active {
            None
        } else {
            Some(s.dropped_at.or(s.delivered_at).unwrap_or(cur.now))
        };
        plan.sessions.push(SessionLine {
            action: Action::Create,
            v2_id: v2_id.to_string(),
            tenant: tenant.clone(),
            active,
            v2_state: state,
            hostnames: hosts
                .iter()
                .filter_map(|h| opt_text(&h.hostname).map(str::to_string))
                .collect(),
            id: None,
            stock_ids: hosts.iter().map(|h| h.id).collect(),
            created_at: s.delivered_at,
            retired_at,
            data: json!({ "v2": v }),
        });
    }

    // --- nodes: states ----------------------------------------------------------------------
    for s in &data.stock {
        if let Some(n) = cur.nodes.get(&s.id) {
            plan.nodes.push(NodeLine {
                action: Action::Unchanged,
                stock_id: s.id,
                hostname: opt_text(&s.hostname).unwrap_or("").to_string(),
                pool: n.pool.clone(),
                state: n.state,
                id: Some(n.id),
                ipaddr: None,
                reusable: false,
                data: Json::Null,
            });
            continue;
        }
        let Some((rule, hostname, ip)) = importable.get(&s.id) else {
            continue;
        };
        let v2_state = opt_text(&s.state).unwrap_or("");
        let (state, why) = if deployed.contains(&s.id) {
            (NodeState::Deployed, None)
        } else {
            node_state(v2_state).expect("checked above")
        };
        if why.is_some()
            && matches!(
                v2_state.to_ascii_lowercase().as_str(),
                "deployed" | "contextualizing"
            )
        {
            plan.problem(
                "stock",
                s.id,
                false,
                format!("{hostname}: {v2_state} in v2 without an active session that is imported: imported as failed"),
            );
        }
        plan.nodes.push(NodeLine {
            action: Action::Create,
            stock_id: s.id,
            hostname: hostname.clone(),
            pool: Some(rule.pool.clone()),
            state,
            id: None,
            ipaddr: ip.clone(),
            reusable: rule.reusable,
            data: node_data(s, why.map(|w| (w, cur.now))),
        });
    }
    Ok(plan)
}

/// Write the plan in the caller's transaction `c`; fills in the ids.
async fn write(cfg: &Config, plan: &mut Plan, c: &impl GenericClient) -> Result<(), ImportError> {
    // tenants
    let new_keys: Vec<Uuid> = plan
        .tenants
        .iter()
        .filter(|t| t.action == Action::Create)
        .map(|t| t.key)
        .collect();
    let mut hashes = hash_all(new_keys).await.into_iter();
    let mut tenant_ids: HashMap<String, TenantRow> = HashMap::new();
    for t in &mut plan.tenants {
        let row = match t.action {
            Action::Create => {
                let new = NewTenant {
                    name: t.name.clone(),
                    ssh_key: t.ssh_key.clone(),
                    node_quota: t.node_quota,
                    ..Default::default()
                };
                let hash = hashes.next().expect("one hash per new tenant");
                tenant::insert_in(c, &new, &hash, ACTOR).await?
            }
            Action::Update => {
                let cur = db::tenants::by_name_for_update(c, &t.name)
                    .await?
                    .ok_or_else(|| TenantError::NotFound(t.name.clone()))?;
                tenant::update_in(
                    c,
                    &cur,
                    t.changes.contains(&"ssh_key").then_some(t.ssh_key.as_str()),
                    t.changes.contains(&"node_quota").then_some(t.node_quota),
                    ACTOR,
                )
                .await?
            }
            Action::Unchanged => db::tenants::by_name(c, &t.name)
                .await?
                .ok_or_else(|| TenantError::NotFound(t.name.clone()))?,
        };
        t.id = Some(row.id);
        tenant_ids.insert(row.name.clone(), row);
    }
    // nodes
    let mut node_ids: HashMap<i64, (i32, Option<String>)> = HashMap::new();
    for n in &mut plan.nodes {
        if n.action != Action::Create {
            if let Some(id) = n.id {
                node_ids.insert(n.stock_id, (id, n.pool.clone()));
            }
            continue;
        }
        let reason = format!("imported from Duffy v2 (stock {})", n.stock_id);
        let node = nodes::insert(
            c,
            &NewNode {
                hostname: Some(n.hostname.clone()),
                ipaddr: n.ipaddr.clone(),
                pool: n.pool.clone(),
                reusable: n.reusable,
                comment: None,
                data: Some(n.data.clone()),
            },
            n.state,
            Actor::Operator,
            &reason,
        )
        .await?;
        audit::record(
            c,
            audit::Entity::Node,
            Some(node.id),
            "import",
            ACTOR,
            json!({"stock_id": n.stock_id, "hostname": n.hostname, "pool": n.pool, "state": n.state}),
        )
        .await?;
        n.id = Some(node.id);
        node_ids.insert(n.stock_id, (node.id, n.pool.clone()));
    }
    // sessions
    for s in &mut plan.sessions {
        if s.action != Action::Create {
            continue;
        }
        let row = &tenant_ids[&s.tenant];
        // an active session gets a full lifetime from the import on: no teardown surprise
        let life = Tenant::new(row.clone(), &cfg.defaults)
            .effective_session_lifetime
            .and_then(|d| chrono::Duration::from_std(d).ok());
        let expires_at = match (s.active, life) {
            (true, Some(life)) => Some(db::sessions::now_utc(c).await? + life),
            _ => None,
        };
        let id = v2::insert_session(
            c,
            &v2::ImportSession {
                tenant_id: row.id,
                created_at: s.created_at,
                expires_at,
                retired_at: s.retired_at,
                data: &s.data,
            },
        )
        .await?;
        let mut by_pool: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for sid in &s.stock_ids {
            if let Some((nid, Some(pool))) = node_ids.get(sid) {
                by_pool.entry(pool.clone()).or_default().push(*nid);
            }
        }
        for (pool, ids) in &by_pool {
            db::sessions::link_nodes(c, id, pool, ids).await?;
        }
        audit::record(
            c,
            audit::Entity::Session,
            Some(id),
            "import",
            ACTOR,
            json!({"v2_id": s.v2_id, "tenant": s.tenant, "active": s.active,
                   "nodes": by_pool.values().flatten().collect::<Vec<_>>()}),
        )
        .await?;
        s.id = Some(id);
    }
    plan.applied = true;
    Ok(())
}

/// Read v2 at `from`, plan, and with `apply` write the plan into duffy's database in one
/// transaction (a second import waits for the first: advisory lock).
pub async fn run(cfg: &Config, db: &Db, from: &V2Target, apply: bool) -> Result<Plan, ImportError> {
    let mut conn = v2::connect(from, std::time::Duration::from_secs(10)).await?;
    let data = v2::read(&mut conn, from).await?;
    let _ = conn.disconnect().await;
    let mut pg = db.get().await?;
    let tx = pg.transaction().await?;
    if apply {
        db::jobs::lock(&*tx, "import-legacy").await?;
    }
    let cur = current(&*tx).await?;
    let mut plan = make_plan(cfg, &data, &cur, &*tx).await?;
    if apply {
        write(cfg, &mut plan, &*tx).await?;
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_host_states() {
        for (v2, duffy, remark) in [
            ("Ready", NodeState::Ready, false),
            ("Active", NodeState::Unused, false),
            ("Provisioning", NodeState::Provisioning, false),
            ("Deprovision", NodeState::Deprovisioning, false),
            ("Failed", NodeState::Failed, true),
            ("Fail", NodeState::Failed, true),
            ("Reserved", NodeState::Failed, true),
            ("Deployed", NodeState::Failed, true),
            ("Contextualizing", NodeState::Failed, true),
        ] {
            let (s, why) = node_state(v2).unwrap();
            assert_eq!((s, why.is_some()), (duffy, remark), "{v2}");
            // a failed node says why in upstream's data.error
            if why.is_some() {
                assert_eq!(s, NodeState::Failed);
            }
        }
        assert!(node_state("").is_none());
        assert!(node_state("Haunted").is_none());
    }

    #[test]
    fn node_data_keeps_the_stock_columns() {
        let t = |s: &str| {
            Some(Text {
                text: s.into(),
                latin1: false,
            })
        };
        let s = V2Stock {
            id: 7,
            hostname: t("n7"),
            ip: t("10.0.0.7"),
            chassis: t("c1"),
            used_count: Some(3),
            state: t("Failed"),
            comment: t("caf\u{e9}"),
            distro: None,
            rel: None,
            ver: t("7"),
            arch: t("x86_64"),
            pool: Some(0),
            console_port: Some(4007),
            flavor: None,
            session_id: None,
            next_state: None,
        };
        let now = chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap();
        let d = node_data(&s, Some(("failed in Duffy v2", now)));
        assert_eq!(
            d,
            json!({"architecture": "x86_64", "chassis": "c1", "console_port": 4007,
                   "used_count": 3, "comment": "caf\u{e9}",
                   "v2": {"stock_id": 7, "state": "Failed", "ver": "7", "arch": "x86_64", "pool": 0},
                   "error": {"failed_at": "2026-01-02T03:04:05.000000", "detail": "failed in Duffy v2"}})
        );
    }
}
