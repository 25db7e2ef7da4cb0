//! The dynamic inventory: Ansible's executable-inventory documents (`--list`, `--host NAME`)
//! built from the duffy database and the `inventory` config section. `duffy-inventory` (the
//! binary) and `inventory/duffy.sh` (the entry Ansible and AWX run) are thin wrappers over
//! [`run`]. Format and options: `inventory/README.md`.
//!
//! * Hosts: every node in the configured states (default: all but `done`), retired ones only
//!   if asked; named by hostname, else IP address (nodes with neither are left out). Should two
//!   listed nodes share a name, the live one (newest first) keeps it, the others become
//!   `<name>~<id>`.
//! * Groups (each name prefixed by `inventory.group-prefix`): `duffy_all`, `pool_<pool>`,
//!   `state_<state>`, `tenant_<tenant>` and `session_<id>` (nodes of active sessions), and
//!   `<attr>_<value>` for each `inventory.attributes` rule (default: `arch_…`, `release_…`).
//!   Names are reduced to `[A-Za-z0-9_]`; if two different values reduce to the same name, the
//!   later one (in sorted order) gets `_2`, `_3`, …. Configured pools and states are listed
//!   even when empty, so a play aimed at them matches nothing instead of failing.
//! * Hostvars: `ansible_host` (the IP address), `duffy_node_id`, `duffy_hostname`, `duffy_pool`,
//!   `duffy_state`, `duffy_reusable`, `duffy_comment`, `duffy_session_id`, `duffy_tenant`,
//!   `duffy_expires_at`, `duffy_retired_at` (retired nodes only), `duffy_<attr>` and `duffy_data`
//!   (the node's `data` without secrets: keys named like passwords, tokens, keys are dropped
//!   by [`crate::secrets`]' one rule).
//! * `artifacts_projects_list` (the CentOS `artifacts-srv` role's variable:
//!   `[{name, ssh_keys: [..]}]`) on `inventory.artifacts-group`, from active non-admin tenants.
//! * Strings from the database that contain `{` are emitted as `{"__ansible_unsafe": "…"}`:
//!   Ansible then never evaluates them as Jinja templates (script inventories are trusted).
//!   Node `data` is judged by its decoded strings: `\u007b` in the stored JSON text is a `{`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;

use serde_json::{Map, Value as Json};
use thiserror::Error;

use crate::config::{self, AttributeRule, Config, ConfigError};
use crate::db::inventory::{ArtifactTenant, InventoryNode};
use crate::db::{self, DbError};
use crate::secrets::{self, Redact};
use crate::state::NodeState;

/// The variable the artifacts storage box role reads.
pub const ARTIFACTS_VAR: &str = "artifacts_projects_list";

/// Why no inventory could be produced. `Display` is the one line Ansible shows.
#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("config error: {0}")]
    Config(#[from] ConfigError),
    #[error("{}", crate::db::error_chain(.0))]
    Db(#[from] DbError),
}

impl InventoryError {
    /// 2 for configuration errors (like `duffy`), 1 for database failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            InventoryError::Config(_) => 2,
            InventoryError::Db(_) => 1,
        }
    }
}

/// What Ansible asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `--list`: every group and `_meta.hostvars`
    List,
    /// `--host NAME`: that host's variables (`{}` for an unknown host, as Ansible expects)
    Host(String),
}

/// The whole job of `duffy-inventory`: load the config (explicit paths, else the usual lookup),
/// read the database on a current-thread runtime over one connection, write the JSON document
/// to `out` (nothing is written when an error is returned).
pub fn run(
    config_paths: &[PathBuf],
    query: &Query,
    pretty: bool,
    out: &mut dyn Write,
) -> Result<(), InventoryError> {
    let cfg = config::load(config_paths)?;
    let inv = db::block_on(load(&cfg))?;
    let written = if pretty {
        let doc = match query {
            Query::List => inv.list_json(),
            Query::Host(h) => inv.host_json(h),
        };
        let v: Json = serde_json::from_slice(&doc).expect("valid JSON");
        serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)
    } else {
        match query {
            Query::List => inv.write_list(&mut *out),
            Query::Host(h) => out.write_all(&inv.host_json(h)),
        }
    };
    // a closed pipe (`| head`) is not worth a message
    let _ = written
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    // a one-shot process: freeing 10 000 hosts one by one is wasted time
    std::mem::forget(inv);
    Ok(())
}

/// Read what the inventory needs (one connection, the queries pipelined) and build it.
pub async fn load(cfg: &Config) -> Result<Inventory, InventoryError> {
    let url = cfg.database_url()?;
    let inv = &cfg.inventory;
    let client = db::inventory::connect(&url, inv.connect_timeout.0).await?;
    let states = inv.effective_states();
    let mut builder = Builder::new(cfg);
    let nodes =
        db::inventory::for_each_node(&client, &states, inv.include_retired, |n| builder.push(n));
    let tenants = if inv.artifacts_group.is_some() {
        let ((), t) = tokio::try_join!(nodes, db::inventory::artifact_tenants(&client))?;
        Some(t)
    } else {
        nodes.await?;
        None
    };
    Ok(builder.finish(tenants.as_deref()))
}

/// A string for Ansible: plain, or marked unsafe when Jinja could read it as a template.
pub fn text(s: &str) -> Json {
    if s.contains('{') {
        let mut m = Map::with_capacity(1);
        m.insert("__ansible_unsafe".into(), Json::String(s.to_string()));
        Json::Object(m)
    } else {
        Json::String(s.to_string())
    }
}

/// [`text`], written straight into a JSON buffer.
fn write_text(out: &mut Vec<u8>, s: &str) {
    if s.contains('{') {
        out.extend_from_slice(b"{\"__ansible_unsafe\":");
        write_str(out, s);
        out.push(b'}');
    } else {
        write_str(out, s);
    }
}

/// A JSON string literal.
fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// An integer, without going through `fmt`.
fn write_int(out: &mut Vec<u8>, v: i32) {
    let mut buf = [0u8; 11];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    out.extend_from_slice(&buf[i..]);
}

/// [`crate::timefmt::iso_z`] as a JSON string, without `strftime` (it runs for every node in a
/// session).
fn write_time(out: &mut Vec<u8>, t: &chrono::NaiveDateTime) {
    use chrono::{Datelike, Timelike};
    let y = t.year();
    if !(0..=9999).contains(&y) || t.nanosecond() >= 1_000_000_000 {
        // beyond four digits, or a leap second: chrono's rendering
        write_str(out, &crate::timefmt::iso_z(t));
        return;
    }
    let two = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    out.push(b'"');
    two(out, y as u32 / 100);
    two(out, y as u32 % 100);
    out.push(b'-');
    two(out, t.month());
    out.push(b'-');
    two(out, t.day());
    out.push(b'T');
    two(out, t.hour());
    out.push(b':');
    two(out, t.minute());
    out.push(b':');
    two(out, t.second());
    let micros = t.nanosecond() / 1000;
    if micros != 0 {
        out.push(b'.');
        two(out, micros / 10_000);
        two(out, micros / 100 % 100);
        two(out, micros % 100);
    }
    out.extend_from_slice(b"Z\"");
}

fn write_opt_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_text(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Node `data` as shown to Ansible: secret-named keys ([`secrets::is_secret_key`]) dropped at
/// every depth, strings made safe ([`text`]).
pub fn public_data(mut v: Json) -> Json {
    secrets::redact(&mut v, Redact::Remove);
    mark_unsafe(&mut v);
    v
}

/// [`text`] applied to every string of `v`, in place.
fn mark_unsafe(v: &mut Json) {
    match v {
        Json::String(s) if s.contains('{') => *v = text(s),
        Json::Object(m) => m.values_mut().for_each(mark_unsafe),
        Json::Array(a) => a.iter_mut().for_each(mark_unsafe),
        _ => {}
    }
}

/// What one pass over a node's `data` text found.
#[derive(Debug, Default, PartialEq)]
struct DataScan {
    /// a key that may name a secret, a string holding `{` (written as such or as the escape
    /// `\u007b`), or an escape in a key: the text must be re-encoded ([`public_data`]) instead
    /// of copied
    needs_rewrite: bool,
    /// top-level scalar values of the wanted keys (strings unescaped, numbers/booleans as written)
    captured: Vec<Option<String>>,
}

/// Scan `data` (valid JSON text, as PostgreSQL stores it) without building a tree: decides
/// whether it can be emitted verbatim, and picks the top-level values of `wanted` keys. This is
/// the inventory's hot loop (every node, every run).
fn scan_data<W: AsRef<str>>(data: &str, wanted: &[W]) -> DataScan {
    let b = data.as_bytes();
    let mut scan = DataScan {
        needs_rewrite: false,
        captured: vec![None; wanted.len()],
    };
    let mut depth = 0usize;
    let mut i = 0;
    // the last string literal: (start, end) of its content, had escapes
    let mut last: Option<(usize, usize, bool)> = None;
    // index into `wanted` whose value comes next (after a depth-1 key)
    let mut pending: Option<usize> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                while j < b.len() && b[j] != b'"' {
                    match b[j] {
                        b'\\' => {
                            // `\u007b` is a `{` too: Ansible decodes it before templating
                            if b.get(j + 1) == Some(&b'u')
                                && b.get(j + 2..j + 6)
                                    .is_some_and(|h| h.eq_ignore_ascii_case(b"007b"))
                            {
                                scan.needs_rewrite = true;
                            }
                            escaped = true;
                            j += 2;
                            continue;
                        }
                        b'{' => scan.needs_rewrite = true,
                        _ => {}
                    }
                    j += 1;
                }
                if j >= b.len() {
                    // not JSON after all: let the re-encoder deal with it
                    scan.needs_rewrite = true;
                    break;
                }
                if let Some(w) = pending.take() {
                    let raw = &data[start - 1..=j];
                    scan.captured[w] = if escaped {
                        serde_json::from_str::<String>(raw).ok()
                    } else {
                        Some(data[start..j].to_string())
                    };
                }
                last = Some((start, j, escaped));
                i = j + 1;
                continue;
            }
            b':' => {
                if let Some((s, e, escaped)) = last.take() {
                    let key = &data[s..e];
                    if escaped || secrets::is_secret_key(key) {
                        scan.needs_rewrite = true;
                    } else if depth == 1 {
                        pending = wanted.iter().position(|w| w.as_ref() == key);
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                pending = None;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => last = None,
            b'-' | b'0'..=b'9' | b't' | b'f' if pending.is_some() => {
                let start = i;
                let mut j = i;
                while j < b.len()
                    && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                {
                    j += 1;
                }
                if let Some(w) = pending.take() {
                    scan.captured[w] = Some(data[start..j].to_string());
                }
                i = j;
                continue;
            }
            b'n' => pending = None,
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Reduce a name to Ansible's safe group-name characters `[A-Za-z0-9_]`, not starting with a
/// digit.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The SSH public keys of upstream's free-text `ssh_key` (one per line; blank lines and
/// `#` comments skipped).
pub fn ssh_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A group before naming: ordered by category, then value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum GroupKey<'a> {
    Pool(&'a str),
    State(NodeState),
    Tenant(&'a str),
    Session(i32),
    /// (index of the attribute in name order, value)
    Attr(usize, &'a str),
}

fn yaml_scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The pool-derived part of a rule: (explicit map or pool config key, pool-name regex).
type PoolValues = (Option<String>, Option<String>);

fn pool_values(rule: &AttributeRule, cfg: &Config, pool: &str) -> PoolValues {
    let first = rule.pools.get(pool).cloned().or_else(|| {
        let key = rule.pool_key.as_deref()?;
        let p = cfg.pool(pool)?;
        yaml_scalar_text(p.vars.get(key)?)
    });
    let last = rule.pool_regex.as_ref().and_then(|re| {
        let caps = re.0.captures(pool)?;
        let m = caps
            .name("value")
            .or_else(|| caps.get(1))
            .or_else(|| caps.get(0))?;
        Some(m.as_str().to_string()).filter(|s| !s.is_empty())
    });
    (first, last)
}

/// A listed node, named.
#[derive(Debug)]
struct Host {
    name: String,
    /// `name` as a JSON string literal (written once per group the host is in)
    name_json: Vec<u8>,
    node: InventoryNode,
    /// (attribute index, value)
    attrs: Vec<(usize, String)>,
    /// `duffy_data` re-encoded without secrets; `None`: `node.data` is emitted verbatim
    data: Option<String>,
}

/// One inventory group.
#[derive(Debug, Clone, Default)]
struct Group {
    /// indices into the (name-sorted) hosts
    hosts: Vec<usize>,
    vars: Map<String, Json>,
}

/// A built inventory: groups and hosts, both in name order.
#[derive(Debug, Default)]
pub struct Inventory {
    attrs: Vec<String>,
    groups: BTreeMap<String, Group>,
    hosts: Vec<Host>,
}

/// Build the inventory from database rows (`tenants`: the artifacts box's tenants, when an
/// artifacts group is configured).
pub fn build(
    cfg: &Config,
    nodes: Vec<InventoryNode>,
    tenants: Option<&[ArtifactTenant]>,
) -> Inventory {
    let mut b = Builder::new(cfg);
    for n in nodes {
        b.push(n);
    }
    b.finish(tenants)
}

/// The inventory, built node by node as rows arrive ([`Builder::push`]: name, data scan,
/// attributes), then named and grouped ([`Builder::finish`]).
pub struct Builder<'c> {
    cfg: &'c Config,
    attr_names: Vec<String>,
    rules: Vec<AttributeRule>,
    /// data keys to pick up while scanning `data`, and which rule uses which
    wanted: Vec<String>,
    rule_key: Vec<Option<usize>>,
    pool_cache: HashMap<String, Vec<PoolValues>>,
    hosts: Vec<Host>,
}

impl<'c> Builder<'c> {
    pub fn new(cfg: &'c Config) -> Builder<'c> {
        let rules = cfg.inventory.effective_attributes();
        let attr_names: Vec<String> = rules.keys().cloned().collect();
        let rules: Vec<AttributeRule> = rules.into_values().collect();
        let mut wanted: Vec<String> = Vec::new();
        let rule_key = rules
            .iter()
            .map(|r| {
                let k = r.data_key.as_deref()?;
                Some(wanted.iter().position(|w| w == k).unwrap_or_else(|| {
                    wanted.push(k.to_string());
                    wanted.len() - 1
                }))
            })
            .collect();
        Builder {
            cfg,
            attr_names,
            rules,
            wanted,
            rule_key,
            pool_cache: HashMap::new(),
            hosts: Vec::new(),
        }
    }

    /// Take one node: named by hostname, else address (a node with neither is left out).
    pub fn push(&mut self, n: InventoryNode) {
        let Some(name) = n
            .hostname
            .as_deref()
            .or(n.ipaddr.as_deref())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            return;
        };
        let scan = scan_data(&n.data, &self.wanted);
        let data = scan.needs_rewrite.then(|| {
            let v: Json = serde_json::from_str(&n.data).unwrap_or(Json::Null);
            serde_json::to_string(&public_data(v)).expect("JSON values serialize")
        });
        let pool_vals: &[PoolValues] = match n.pool.as_deref() {
            Some(p) => {
                if !self.pool_cache.contains_key(p) {
                    let v = self
                        .rules
                        .iter()
                        .map(|r| pool_values(r, self.cfg, p))
                        .collect();
                    self.pool_cache.insert(p.to_string(), v);
                }
                &self.pool_cache[p]
            }
            None => &[],
        };
        let mut attrs = Vec::new();
        for a in 0..self.rules.len() {
            let (first, last) = pool_vals
                .get(a)
                .map(|(f, l)| (f.as_ref(), l.as_ref()))
                .unzip();
            let from_data = self.rule_key[a]
                .and_then(|k| scan.captured[k].as_ref())
                .filter(|v| !v.is_empty());
            if let Some(v) = first.flatten().or(from_data).or(last.flatten()) {
                attrs.push((a, v.clone()));
            }
        }
        self.hosts.push(Host {
            name,
            name_json: Vec::new(),
            node: n,
            attrs,
            data,
        });
    }

    /// Name the hosts (clashes resolved), group them, add the artifacts variable.
    pub fn finish(self, tenants: Option<&[ArtifactTenant]>) -> Inventory {
        let Builder {
            cfg,
            attr_names,
            mut hosts,
            ..
        } = self;
        let icfg = &cfg.inventory;
        let prefix = icfg.group_prefix.as_str();

        // on a name clash the live, newest node keeps the name; the others get `~<id>`
        let dead = |n: &InventoryNode| {
            n.retired_at.is_some() || matches!(n.state, NodeState::Failed | NodeState::Done)
        };
        hosts.sort_by(|x, y| {
            x.name
                .cmp(&y.name)
                .then_with(|| dead(&x.node).cmp(&dead(&y.node)))
                .then_with(|| y.node.id.cmp(&x.node.id))
        });
        let mut renamed = false;
        let mut start = 0;
        for i in 1..hosts.len() {
            if hosts[i].name == hosts[start].name {
                let id = hosts[i].node.id;
                hosts[i].name = format!("{}~{id}", hosts[i].name);
                renamed = true;
            } else {
                start = i;
            }
        }
        if renamed {
            hosts.sort_by(|x, y| x.name.cmp(&y.name));
        }
        for h in &mut hosts {
            write_str(&mut h.name_json, &h.name);
        }

        // memberships
        let mut members: BTreeMap<GroupKey, Vec<usize>> = BTreeMap::new();
        for p in cfg.concrete_pools() {
            members.entry(GroupKey::Pool(&p.name)).or_default();
        }
        let states = icfg.effective_states();
        for s in &states {
            members.entry(GroupKey::State(*s)).or_default();
        }
        for (i, h) in hosts.iter().enumerate() {
            let n = &h.node;
            members.entry(GroupKey::State(n.state)).or_default().push(i);
            if let Some(p) = &n.pool {
                members.entry(GroupKey::Pool(p)).or_default().push(i);
            }
            if let Some(t) = &n.tenant {
                members.entry(GroupKey::Tenant(t)).or_default().push(i);
            }
            if let Some(s) = n.session_id {
                members.entry(GroupKey::Session(s)).or_default().push(i);
            }
            for (a, v) in &h.attrs {
                members.entry(GroupKey::Attr(*a, v)).or_default().push(i);
            }
        }

        // group names: prefixed, sanitised, unique (a clash gets _2, _3, … in key order)
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let all = sanitize(&format!("{prefix}duffy_all"));
        taken.insert(all.clone());
        groups.insert(
            all,
            Group {
                hosts: (0..hosts.len()).collect(),
                vars: Map::new(),
            },
        );
        for (key, idx) in members {
            let raw = match key {
                GroupKey::Pool(p) => format!("pool_{p}"),
                GroupKey::State(s) => format!("state_{s}"),
                GroupKey::Tenant(t) => format!("tenant_{t}"),
                GroupKey::Session(id) => format!("session_{id}"),
                GroupKey::Attr(a, v) => format!("{}_{v}", attr_names[a]),
            };
            let base = sanitize(&format!("{prefix}{raw}"));
            let mut name = base.clone();
            let mut k = 2;
            while taken.contains(&name) {
                name = format!("{base}_{k}");
                k += 1;
            }
            taken.insert(name.clone());
            groups.insert(
                name,
                Group {
                    hosts: idx,
                    vars: Map::new(),
                },
            );
        }

        // the artifacts storage box: its group is named verbatim (it lives in the static inventory)
        if let (Some(group), Some(tenants)) = (&icfg.artifacts_group, tenants) {
            let list: Vec<Json> = tenants
                .iter()
                .map(|t| {
                    let mut m = Map::with_capacity(2);
                    m.insert("name".into(), text(&t.name));
                    m.insert(
                        "ssh_keys".into(),
                        Json::Array(ssh_keys(&t.ssh_key).iter().map(|k| text(k)).collect()),
                    );
                    Json::Object(m)
                })
                .collect();
            groups
                .entry(group.clone())
                .or_default()
                .vars
                .insert(ARTIFACTS_VAR.into(), Json::Array(list));
        }

        Inventory {
            attrs: attr_names,
            groups,
            hosts,
        }
    }
}

impl Inventory {
    /// Group names, in order.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// The hosts of a group, in name order.
    pub fn group_hosts(&self, group: &str) -> Option<Vec<&str>> {
        let g = self.groups.get(group)?;
        Some(
            g.hosts
                .iter()
                .map(|&i| self.hosts[i].name.as_str())
                .collect(),
        )
    }

    /// Host names, in order.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str())
    }

    fn write_hostvars(&self, h: &Host, out: &mut Vec<u8>) {
        let n = &h.node;
        out.push(b'{');
        if let Some(ip) = n.ipaddr.as_deref().filter(|s| !s.is_empty()) {
            out.extend_from_slice(b"\"ansible_host\":");
            write_text(out, ip);
            out.push(b',');
        }
        out.extend_from_slice(b"\"duffy_node_id\":");
        write_int(out, n.id);
        out.extend_from_slice(b",\"duffy_hostname\":");
        write_opt_text(out, n.hostname.as_deref());
        out.extend_from_slice(b",\"duffy_pool\":");
        write_opt_text(out, n.pool.as_deref());
        out.extend_from_slice(b",\"duffy_state\":\"");
        out.extend_from_slice(n.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"duffy_reusable\":");
        out.extend_from_slice(if n.reusable { b"true" } else { b"false" });
        out.extend_from_slice(b",\"duffy_comment\":");
        write_opt_text(out, n.comment.as_deref());
        out.extend_from_slice(b",\"duffy_session_id\":");
        match n.session_id {
            Some(s) => write_int(out, s),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"duffy_tenant\":");
        write_opt_text(out, n.tenant.as_deref());
        out.extend_from_slice(b",\"duffy_expires_at\":");
        match &n.expires_at {
            Some(t) => write_time(out, t),
            None => out.extend_from_slice(b"null"),
        }
        if let Some(t) = &n.retired_at {
            out.extend_from_slice(b",\"duffy_retired_at\":");
            write_time(out, t);
        }
        for (a, v) in &h.attrs {
            out.extend_from_slice(b",\"duffy_");
            out.extend_from_slice(self.attrs[*a].as_bytes());
            out.extend_from_slice(b"\":");
            write_text(out, v);
        }
        out.extend_from_slice(b",\"duffy_data\":");
        out.extend_from_slice(h.data.as_deref().unwrap_or(&n.data).as_bytes());
        out.push(b'}');
    }

    /// The `--list` document (compact JSON): every group (`hosts`, and `vars` when there are
    /// any), then `_meta.hostvars`.
    pub fn list_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_list(&mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// [`Inventory::list_json`], streamed to `w` (through a small buffer: 10 000 hosts are
    /// several MB of JSON that need not sit in memory at once).
    pub fn write_list(&self, w: &mut dyn Write) -> std::io::Result<()> {
        const CHUNK: usize = 64 * 1024;
        let mut out = Vec::with_capacity(2 * CHUNK);
        out.push(b'{');
        for (name, g) in &self.groups {
            write_str(&mut out, name);
            out.extend_from_slice(b":{\"hosts\":[");
            for (k, &i) in g.hosts.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.hosts[i].name_json);
                if out.len() >= CHUNK {
                    w.write_all(&out)?;
                    out.clear();
                }
            }
            out.push(b']');
            if !g.vars.is_empty() {
                out.extend_from_slice(b",\"vars\":");
                serde_json::to_writer(&mut out, &g.vars).expect("JSON values serialize");
            }
            out.extend_from_slice(b"},");
        }
        out.extend_from_slice(b"\"_meta\":{\"hostvars\":{");
        for (k, h) in self.hosts.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&h.name_json);
            out.push(b':');
            self.write_hostvars(h, &mut out);
            if out.len() >= CHUNK {
                w.write_all(&out)?;
                out.clear();
            }
        }
        out.extend_from_slice(b"}}}");
        w.write_all(&out)
    }

    /// The `--host NAME` document: the host's variables, `{}` when unknown.
    pub fn host_json(&self, host: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match self.hosts.binary_search_by(|h| h.name.as_str().cmp(host)) {
            Ok(i) => self.write_hostvars(&self.hosts[i], &mut out),
            Err(_) => out.extend_from_slice(b"{}"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use chrono::NaiveDateTime;
    use serde_json::json;

    fn cfg(yaml: &str) -> Config {
        let mut raw = RawConfig::default();
        raw.merge_str(yaml, "t.yaml").unwrap();
        Config::from_raw(raw).unwrap()
    }

    fn node(
        id: i32,
        host: Option<&str>,
        ip: Option<&str>,
        state: NodeState,
        pool: Option<&str>,
    ) -> InventoryNode {
        InventoryNode {
            id,
            hostname: host.map(str::to_string),
            ipaddr: ip.map(str::to_string),
            state,
            comment: None,
            pool: pool.map(str::to_string),
            reusable: false,
            data: "{}".into(),
            retired_at: None,
            session_id: None,
            expires_at: None,
            tenant: None,
        }
    }

    fn hosts<'a>(inv: &'a Inventory, group: &str) -> Vec<&'a str> {
        inv.group_hosts(group).unwrap_or_else(|| {
            panic!(
                "no group {group} in {:?}",
                inv.group_names().collect::<Vec<_>>()
            )
        })
    }

    fn doc(inv: &Inventory) -> Json {
        serde_json::from_slice(&inv.list_json()).expect("--list is JSON")
    }

    fn hostvars(inv: &Inventory, host: &str) -> Json {
        serde_json::from_slice(&inv.host_json(host)).expect("--host is JSON")
    }

    #[test]
    fn sanitizes_to_ansible_group_names() {
        assert_eq!(
            sanitize("pool_metal-ec2-c5n-centos-10s-x86_64"),
            "pool_metal_ec2_c5n_centos_10s_x86_64"
        );
        assert_eq!(sanitize("tenant_a.b@c"), "tenant_a_b_c");
        assert_eq!(sanitize("9s"), "_9s");
        assert_eq!(sanitize("Grüße"), "Gr__e");
        assert_eq!(sanitize(""), "_");
    }

    #[test]
    fn strips_secrets_and_marks_templates_unsafe() {
        let d = json!({
            "bmc": {"address": "10.0.0.9", "user": "root", "password": "hunter2", "credential": "rack3"},
            "ipmi_password": "x", "api_token": "t", "Secret": 1, "ssh_private": "k", "key": "k",
            "provision": {"ipaddr": "10.0.0.1", "tags": ["{{ lookup('pipe', 'id') }}", "plain"]},
            "architecture": "x86_64", "n": 3
        });
        assert_eq!(
            public_data(d),
            json!({
                "bmc": {"address": "10.0.0.9", "user": "root", "credential": "rack3"},
                "provision": {"ipaddr": "10.0.0.1", "tags": [{"__ansible_unsafe": "{{ lookup('pipe', 'id') }}"}, "plain"]},
                "architecture": "x86_64", "n": 3
            })
        );
        assert_eq!(text("a{b"), json!({"__ansible_unsafe": "a{b"}));
        assert_eq!(text("ab"), json!("ab"));
    }

    #[test]
    fn data_scan_copies_clean_data_and_picks_top_level_values() {
        let clean = r#"{"provision": {"ipaddr": "10.0.0.1", "architecture": "nested"}, "architecture": "x86_64",
                        "slot": 12, "on": true, "mac": "52:54:00:12:34:56", "tags": ["a", "b:c"], "n": null}"#;
        let s = scan_data(
            clean,
            &["architecture", "slot", "on", "n", "tags", "missing"],
        );
        assert!(!s.needs_rewrite);
        assert_eq!(
            s.captured,
            [
                Some("x86_64".into()),
                Some("12".into()),
                Some("true".into()),
                None,
                None,
                None
            ]
        );
        let s = scan_data(r#"{"a": "esc\"aped", "b": -1.5e3}"#, &["a", "b"]);
        assert_eq!(
            s.captured,
            [Some("esc\"aped".into()), Some("-1.5e3".into())]
        );
        assert!(!s.needs_rewrite);
        // anything that could be a secret key, a template, or an escaped key: re-encoded
        for dirty in [
            r#"{"bmc": {"Password": "x"}}"#,
            r#"{"note": "{{ 40 + 2 }}"}"#,
            r#"{"ke\u0079": "x"}"#,
            r#"[{"token": 1}]"#,
            r#"{"a": "unterminated"#,
        ] {
            assert!(scan_data(dirty, &[] as &[&str]).needs_rewrite, "{dirty}");
        }
        // a brace or a secret word inside a value is fine... unless it is a `{`
        assert!(
            !scan_data(r#"{"comment": "my password is not here"}"#, &[] as &[&str]).needs_rewrite
        );
        assert!(scan_data(r#"{"comment": "x{y"}"#, &[] as &[&str]).needs_rewrite);
        // the verbatim text and the re-encoding agree on clean data
        let v: Json = serde_json::from_str(clean).unwrap();
        assert_eq!(public_data(v.clone()), v);
        // `{` written as a JSON escape is a `{` (issue 12 item 3); other escapes are not
        for esc in [r#"{"n": "\u007b\u007b x }}"}"#, r#"[{"n": ["a\u007Bb"]}]"#] {
            assert!(scan_data(esc, &[] as &[&str]).needs_rewrite, "{esc}");
        }
        for esc in [r#"{"n": "\u0041\\u007b \n \""}"#, r#"{"n": "\\u007b"}"#] {
            assert!(!scan_data(esc, &[] as &[&str]).needs_rewrite, "{esc}");
        }
    }

    #[test]
    fn writes_times_like_timefmt() {
        for t in [
            "2030-01-02 03:04:05",
            "2030-01-01 06:30:00.25",
            "2026-11-25 17:06:21.5929",
            "1999-12-31 23:59:59.000001",
            "0042-02-03 00:00:00",
            "2016-12-31 23:59:60.5",
        ] {
            let t = NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").unwrap();
            let mut out = Vec::new();
            write_time(&mut out, &t);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("\"{}\"", crate::timefmt::iso_z(&t))
            );
        }
    }

    #[test]
    fn writes_integers() {
        for v in [0, 7, -7, 42, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            write_int(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
    }

    #[test]
    fn splits_ssh_keys() {
        assert_eq!(
            ssh_keys("ssh-ed25519 AAA a@b\n\n  # old key\nssh-rsa BBB c@d  \n"),
            ["ssh-ed25519 AAA a@b", "ssh-rsa BBB c@d"]
        );
        assert!(ssh_keys("").is_empty());
    }

    #[test]
    fn groups_by_pool_state_session_tenant_and_attributes() {
        let c = cfg(
            "nodepools:\n  concrete:\n    empty-pool:\n      fill-level: 1\n      \
                     mechanism: {type: ansible, ansible: {provision: {playbook: p.yml}}}\n",
        );
        let mut a = node(
            1,
            Some("a.example.net"),
            Some("10.0.0.1"),
            NodeState::Deployed,
            Some("metal-ec2-c5n-centos-10s-x86_64"),
        );
        a.session_id = Some(7);
        a.tenant = Some("my.tenant".into());
        a.expires_at = Some(
            NaiveDateTime::parse_from_str("2030-01-02 03:04:05", "%Y-%m-%d %H:%M:%S").unwrap(),
        );
        let b = node(
            2,
            Some("b.example.net"),
            Some("10.0.0.2"),
            NodeState::Ready,
            Some("virt-one-medium-centos-9s-ppc64le"),
        );
        let mut u = node(
            3,
            Some("u.example.net"),
            Some("10.0.0.3"),
            NodeState::Unused,
            None,
        );
        u.data = r#"{"architecture": "aarch64", "bmc": {"address": "10.9.9.9", "password": "pw"}}"#
            .into();
        let none = node(
            4,
            None,
            None,
            NodeState::Provisioning,
            Some("virt-one-medium-centos-9s-ppc64le"),
        );
        let inv = build(&c, vec![a, b, u, none], None);
        assert_eq!(
            hosts(&inv, "duffy_all"),
            ["a.example.net", "b.example.net", "u.example.net"]
        );
        assert_eq!(
            hosts(&inv, "pool_metal_ec2_c5n_centos_10s_x86_64"),
            ["a.example.net"]
        );
        assert!(hosts(&inv, "pool_empty_pool").is_empty());
        assert_eq!(hosts(&inv, "state_ready"), ["b.example.net"]);
        assert!(hosts(&inv, "state_failed").is_empty());
        assert!(inv.group_hosts("state_done").is_none());
        assert_eq!(hosts(&inv, "session_7"), ["a.example.net"]);
        assert_eq!(hosts(&inv, "tenant_my_tenant"), ["a.example.net"]);
        assert_eq!(hosts(&inv, "arch_x86_64"), ["a.example.net"]);
        assert_eq!(hosts(&inv, "arch_ppc64le"), ["b.example.net"]);
        assert_eq!(hosts(&inv, "arch_aarch64"), ["u.example.net"]);
        assert_eq!(hosts(&inv, "release_centos_10s"), ["a.example.net"]);
        assert_eq!(hosts(&inv, "release_centos_9s"), ["b.example.net"]);
        let d = doc(&inv);
        let hv = &d["_meta"]["hostvars"]["a.example.net"];
        assert_eq!(
            hv,
            &json!({
                "ansible_host": "10.0.0.1", "duffy_node_id": 1, "duffy_hostname": "a.example.net",
                "duffy_pool": "metal-ec2-c5n-centos-10s-x86_64", "duffy_state": "deployed",
                "duffy_reusable": false, "duffy_comment": null, "duffy_session_id": 7,
                "duffy_tenant": "my.tenant", "duffy_expires_at": "2030-01-02T03:04:05Z",
                "duffy_arch": "x86_64", "duffy_release": "centos-10s", "duffy_data": {}
            })
        );
        // key order is fixed
        assert_eq!(
            hv.as_object().unwrap().keys().next().map(String::as_str),
            Some("ansible_host")
        );
        assert_eq!(
            d["_meta"]["hostvars"]["u.example.net"]["duffy_data"],
            json!({"architecture": "aarch64", "bmc": {"address": "10.9.9.9"}})
        );
        assert_eq!(hostvars(&inv, "nope"), json!({}));
        assert_eq!(&hostvars(&inv, "a.example.net"), hv);
        // groups in name order, `_meta` last
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        assert_eq!(keys.last().unwrap().as_str(), "_meta");
        assert!(keys[..keys.len() - 1].windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn attribute_sources_have_a_precedence() {
        let c = cfg("nodepools:\n  concrete:\n    physical-centos9stream-x86_64:\n      fill-level: 1\n      \
                     architecture: from-pool-config\n      \
                     mechanism: {type: ansible, ansible: {provision: {playbook: p.yml}}}\n\
                     inventory:\n  attributes:\n    arch:\n      pools: {explicit-pool: from-map}\n      \
                     pool-key: architecture\n      data-key: arch\n      pool-regex: '-(x86_64|aarch64)$'\n    \
                     gen: {pool-regex: 'centos(\\d+)stream'}\n    slot: {data-key: slot}\n");
        let from_data = r#"{"arch": "from-data", "slot": 4}"#;
        let mut n1 = node(1, Some("h1"), None, NodeState::Ready, Some("explicit-pool"));
        n1.data = from_data.into();
        let mut n2 = node(
            2,
            Some("h2"),
            None,
            NodeState::Ready,
            Some("physical-centos9stream-x86_64"),
        );
        n2.data = from_data.into();
        let mut n3 = node(3, Some("h3"), None, NodeState::Ready, Some("other-aarch64"));
        n3.data = from_data.into();
        let n4 = node(4, Some("h4"), None, NodeState::Ready, Some("other-aarch64"));
        let n5 = node(5, Some("h5"), None, NodeState::Ready, Some("nothing"));
        let inv = build(&c, vec![n1, n2, n3, n4, n5], None);
        let d = doc(&inv);
        let arch = |h: &str| d["_meta"]["hostvars"][h].get("duffy_arch").cloned();
        assert_eq!(arch("h1"), Some(json!("from-map")));
        assert_eq!(arch("h2"), Some(json!("from-pool-config")));
        assert_eq!(arch("h3"), Some(json!("from-data")));
        assert_eq!(arch("h4"), Some(json!("aarch64")));
        assert_eq!(arch("h5"), None);
        assert_eq!(d["_meta"]["hostvars"]["h2"]["duffy_gen"], json!("9"));
        assert_eq!(d["_meta"]["hostvars"]["h3"]["duffy_slot"], json!("4"));
        assert_eq!(hosts(&inv, "gen_9"), ["h2"]);
        assert_eq!(hosts(&inv, "slot_4"), ["h1", "h2", "h3"]);
        assert_eq!(hosts(&inv, "arch_from_data"), ["h3"]);
        // no ipaddr: no ansible_host
        assert!(d["_meta"]["hostvars"]["h1"].get("ansible_host").is_none());
        // the default attributes are replaced, not merged
        assert!(!inv.group_names().any(|g| g.starts_with("release_")));
    }

    #[test]
    fn clashing_names_are_made_unique_deterministically() {
        let c = cfg("inventory: {group-prefix: x_, attributes: {}}");
        let mut a = node(
            1,
            Some("h.example.net"),
            Some("10.0.0.1"),
            NodeState::Failed,
            Some("a-b"),
        );
        a.tenant = Some("t-1".into());
        a.session_id = Some(1);
        let mut b = node(
            2,
            Some("h.example.net"),
            Some("10.0.0.2"),
            NodeState::Ready,
            Some("a.b"),
        );
        b.tenant = Some("t.1".into());
        b.session_id = Some(2);
        let c2 = node(3, None, Some("10.0.0.3"), NodeState::Ready, Some("a_b"));
        let mut d2 = node(
            4,
            Some("h.example.net"),
            Some("10.0.0.4"),
            NodeState::Ready,
            Some("a_b"),
        );
        d2.retired_at = Some(NaiveDateTime::default());
        let inv = build(&c, vec![a, b, c2, d2], None);
        let d = doc(&inv);
        let id = |h: &str| d["_meta"]["hostvars"][h]["duffy_node_id"].clone();
        // the live node keeps the hostname, the failed/retired ones get their id appended
        assert_eq!(id("h.example.net"), json!(2));
        assert_eq!(id("h.example.net~4"), json!(4));
        assert_eq!(id("h.example.net~1"), json!(1));
        // an address-only node is named by its address
        assert_eq!(id("10.0.0.3"), json!(3));
        // pools a-b, a.b, a_b all reduce to x_pool_a_b: sorted raw order decides the suffix
        assert_eq!(hosts(&inv, "x_pool_a_b"), ["h.example.net~1"]);
        assert_eq!(hosts(&inv, "x_pool_a_b_2"), ["h.example.net"]);
        assert_eq!(hosts(&inv, "x_pool_a_b_3"), ["10.0.0.3", "h.example.net~4"]);
        assert_eq!(hosts(&inv, "x_tenant_t_1"), ["h.example.net~1"]);
        assert_eq!(hosts(&inv, "x_tenant_t_1_2"), ["h.example.net"]);
        assert!(inv.group_names().any(|g| g == "x_duffy_all"));
        assert!(inv.group_names().all(|g| g.starts_with("x_")));
    }

    #[test]
    fn artifacts_projects_list_goes_to_the_configured_group() {
        let c = cfg("inventory: {artifacts-group: hostgroup-role-artifacts-srv}");
        let tenants = [
            ArtifactTenant {
                name: "samba".into(),
                ssh_key: "ssh-rsa AAA samba@CI\nssh-ed25519 BBB x@y\n".into(),
            },
            ArtifactTenant {
                name: "t{{x}}".into(),
                ssh_key: String::new(),
            },
        ];
        let inv = build(&c, vec![], Some(&tenants));
        let d = doc(&inv);
        assert_eq!(
            d["hostgroup-role-artifacts-srv"],
            json!({"hosts": [], "vars": {"artifacts_projects_list": [
                {"name": "samba", "ssh_keys": ["ssh-rsa AAA samba@CI", "ssh-ed25519 BBB x@y"]},
                {"name": {"__ansible_unsafe": "t{{x}}"}, "ssh_keys": []}
            ]}})
        );
        assert_eq!(d["duffy_all"], json!({"hosts": []}));
        assert_eq!(d["_meta"], json!({"hostvars": {}}));
        // without the group configured there is no such variable anywhere
        let inv = build(&cfg(""), vec![], None);
        assert!(!String::from_utf8(inv.list_json())
            .unwrap()
            .contains(ARTIFACTS_VAR));
    }
}
