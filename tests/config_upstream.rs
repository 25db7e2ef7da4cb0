//! duffy loads every configuration upstream Duffy 3.4.0 accepts (issue 15 item 5), checked side
//! by side with the REAL upstream `duffy config check` (venv from `.ci/upstream-venv.sh`):
//! upstream's own example config (`tests/upstream-config/`) and the sample pools of
//! ansible-role-duffy (compat spec §11.2, `etc/pools/70_nodepools-sample.yaml`) start
//! `duffy serve`; a table of edge cases gets the same verdict from both; a concrete pool without
//! a provision playbook loads with a warning and the scheduler reports it instead of filling.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Upstream 3.4.0's `duffy` (venv made once per test process by `.ci/upstream-venv.sh`).
fn upstream_duffy() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        venv_bin("upstream-venv.sh", "DUFFY_UPSTREAM_VENV", ".venv-upstream").join("duffy")
    })
    .clone()
}

/// Upstream's `duffy -c PATH config check`.
fn upstream_check(path: &Path) -> Output {
    let home = std::env::temp_dir().join("duffy-test-empty-home");
    Command::new(upstream_duffy())
        .arg("-c")
        .arg(path)
        .args(["config", "check"])
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("DUFFY_CONFIG")
        .env_remove("PYTHONPATH")
        .output()
        .expect("run upstream duffy")
}

/// Upstream's verdict on many config files in one Python process (its CLI takes seconds to
/// start): `read_configuration(path, clear=True, validate=True)`, exactly what its `duffy -c
/// PATH` runs before `config check` prints "OK.".
fn upstream_accepts(paths: &[PathBuf]) -> Vec<bool> {
    let python = upstream_duffy().with_file_name("python3");
    let o = Command::new(python)
        .args([
            "-c",
            "import sys\n\
             from duffy.configuration import read_configuration\n\
             for p in sys.argv[1:]:\n\
             \x20   try:\n\
             \x20       read_configuration(p, clear=True, validate=True)\n\
             \x20       print('accepts')\n\
             \x20   except Exception as e:\n\
             \x20       print('refuses')\n",
        ])
        .args(paths)
        .env_remove("PYTHONPATH")
        .output()
        .expect("run upstream's python");
    assert!(o.status.success(), "{}", stderr(&o));
    let verdicts: Vec<bool> = stdout(&o).lines().map(|l| l == "accepts").collect();
    assert_eq!(verdicts.len(), paths.len(), "{}", stdout(&o));
    verdicts
}

fn example() -> PathBuf {
    repo().join("tests/upstream-config/duffy-example-config.yaml")
}

/// A config directory: upstream's files copied in, then `50_database.yaml` pointing at `db`
/// (what an operator adds: upstream's example runs on in-memory SQLite).
fn with_database(files: &[&Path], db: &TestDb, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, f) in files.iter().enumerate() {
        std::fs::copy(f, dir.path().join(format!("{}_upstream.yaml", 10 + i))).unwrap();
    }
    std::fs::write(
        dir.path().join("50_database.yaml"),
        format!(
            "database:\n  sqlalchemy:\n    sync_url: {url}\n    async_url: {url}\n{extra}",
            url = db.url
        ),
    )
    .unwrap();
    dir
}

#[test]
fn upstreams_example_config_passes_both_checks_and_serves() {
    // both checks accept the file as it is, SQLite URL included: duffy warns about the URL
    let up = upstream_check(&example());
    assert!(up.status.success(), "upstream: {}", stderr(&up));
    let o = duffy(Some(&example()), &["config", "check"]);
    let out = ok(&o);
    assert!(out.starts_with("OK.\nValidated configuration subkeys: client, app, metaclient, tasks, database, defaults, nodepools\n"), "{out}");
    assert!(
        stderr(&o)
            .contains("database.sqlalchemy.sync_url: unsupported database URL scheme \"sqlite\""),
        "{}",
        stderr(&o)
    );
    // what needs the database refuses SQLite in one line naming the key
    let o = duffy(Some(&example()), &["migrate"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let last = stderr(&o).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("duffy: config error: ")
            && last.contains("duffy-example-config.yaml: database.sqlalchemy.sync_url: unsupported database URL scheme \"sqlite\"")
            && last.contains("duffy needs PostgreSQL"),
        "{last}"
    );

    // with a PostgreSQL database added, it serves its pools
    let db = TestDb::empty();
    let dir = with_database(&[&example()], &db, "");
    ok(&duffy(Some(dir.path()), &["migrate"]));
    let server = Server::start(dir.path());
    let (status, body) = http_get(server.port, "/api/v1/pools");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools: Vec<(String, u64)> = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["fill-level"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [
        ("physical-centos8stream-x86_64", 5),
        ("physical-fedora34-x86_64", 5),
        ("physical-fedora35-x86_64", 5),
        ("virtual-centos8stream-x86_64-small", 20),
        ("virtual-centos8stream-x86_64-medium", 10),
        ("virtual-centos8stream-x86_64-large", 5),
        ("virtual-fedora34-x86_64-small", 20),
        ("virtual-fedora35-x86_64-small", 20),
        ("virtual-fedora34-x86_64-medium", 10),
        ("virtual-fedora35-x86_64-medium", 10),
        ("virtual-fedora34-x86_64-large", 5),
        ("virtual-fedora35-x86_64-large", 5),
    ]
    .iter()
    .map(|(n, l)| (n.to_string(), *l))
    .collect();
    assert_eq!(pools, want);
}

#[test]
fn ansible_role_duffys_sample_pools_serve() {
    // compat spec §11.2: the role's files/70_nodepools.yml
    let sample = repo().join("etc/pools/70_nodepools-sample.yaml");
    let up = upstream_check(&sample);
    assert!(up.status.success(), "upstream: {}", stderr(&up));
    let db = TestDb::empty();
    let dir = with_database(&[&sample], &db, DEFAULTS_YAML);
    ok(&duffy(Some(dir.path()), &["migrate"]));
    let server = Server::start(dir.path());
    let (status, body) = http_get(server.port, "/api/v1/pools");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        "{\"action\":\"get\",\"pools\":[\
         {\"name\":\"virtual-centos8stream-x86_64\",\"fill-level\":3},\
         {\"name\":\"virtual-centos9stream-x86_64-small\",\"fill-level\":3},\
         {\"name\":\"physical-centos8stream-x86_64\",\"fill-level\":2},\
         {\"name\":\"physical-centos9stream-x86_64\",\"fill-level\":2}]}"
    );
}

const MECH: &str = "mechanism: {type: ansible, ansible: {provision: {playbook: x.yml}}}";

/// Configs that probe upstream's validation (`duffy.configuration.validation`, Pydantic 2 lax
/// mode, PyYAML's YAML 1.1): each gets the same verdict from upstream's and duffy's check.
fn cases() -> Vec<(&'static str, String)> {
    let pool = |keys: &str| format!("nodepools:\n  concrete:\n    p: {{{keys}}}\n");
    vec![
        // concrete pools without a (complete) mechanism
        ("no mechanism", pool("fill-level: 2")),
        ("no mechanism type", pool("mechanism: {ansible: {provision: {playbook: x.yml}}}")),
        ("no ansible", pool("mechanism: {type: ansible}")),
        ("no provision", pool("mechanism: {type: ansible, ansible: {topdir: /x}}")),
        ("provision null", pool("mechanism: {type: ansible, ansible: {provision: ~}}")),
        ("deprovision only", pool("mechanism: {type: ansible, ansible: {deprovision: {playbook: d.yml}}}")),
        // Pydantic's lax scalars and YAML 1.1
        ("fill-level string", pool(&format!("fill-level: '3', {MECH}"))),
        ("fill-level float", pool(&format!("fill-level: 3.0, {MECH}"))),
        ("fill-level true", pool(&format!("fill-level: true, {MECH}"))),
        ("fill-level underscores", pool(&format!("fill-level: 1_0, {MECH}"))),
        ("run-parallel yes", pool(&format!("run-parallel: yes, {MECH}"))),
        ("run-parallel 'off'", pool(&format!("run-parallel: 'off', {MECH}"))),
        ("run-parallel 0", pool(&format!("run-parallel: 0, {MECH}"))),
        ("reuse-nodes boolean value", pool(&format!("reuse-nodes: {{a: true}}, {MECH}"))),
        ("port string", "app:\n  port: '8080'\n".into()),
        ("metaclient port string", "metaclient:\n  port: '9090'\n  usermap: {}\n  poolmap: []\n".into()),
        ("node-quota string", "defaults:\n  session-lifetime: 6h\n  session-lifetime-max: 12h\n  node-quota: '10'\n".into()),
        ("retries strings", "app:\n  retries:\n    no-attempts: '5'\n    delay-min: '0.1'\n    delay-max: 2\n".into()),
        ("sqlite database", "database:\n  sqlalchemy:\n    sync_url: 'sqlite:///:memory:'\n    async_url: 'sqlite+aiosqlite:///:memory:'\n".into()),
        ("extends a later pool", format!("nodepools:\n  concrete:\n    p: {{extends: a}}\n  abstract:\n    a: {{{MECH}}}\n")),
        ("empty app", "app:\n".into()),
        // what upstream refuses
        ("fill-level 0", pool(&format!("fill-level: 0, {MECH}"))),
        ("fill-level fraction", pool(&format!("fill-level: 2.5, {MECH}"))),
        ("run-parallel 2", pool(&format!("run-parallel: 2, {MECH}"))),
        ("run-parallel maybe", pool(&format!("run-parallel: maybe, {MECH}"))),
        ("extends a list", format!("nodepools:\n  abstract:\n    a: {{x: 1}}\n  concrete:\n    p: {{extends: [a], {MECH}}}\n")),
        ("unknown mechanism key", pool("mechanism: {type: ansible, foo: 1, ansible: {provision: {playbook: x.yml}}}")),
        ("unknown mechanism type", pool("mechanism: {type: shell}")),
        ("playbook a number", pool("mechanism: {type: ansible, ansible: {provision: {playbook: 5}}}")),
        ("topdir a number", pool("mechanism: {type: ansible, ansible: {topdir: 5, provision: {playbook: x.yml}}}")),
        ("reuse-nodes fraction", pool(&format!("reuse-nodes: {{a: 1.5}}, {MECH}"))),
        ("port words", "app:\n  port: http\n".into()),
        ("port 0", "app:\n  port: 0\n".into()),
        ("loglevel upper case", "app:\n  loglevel: WARNING\n".into()),
        ("client key not a UUID", "client:\n  url: http://x\n  auth: {name: a, key: notauuid}\n".into()),
        ("unknown top-level key", "frobnicate: 1\n".into()),
    ]
}

#[test]
fn duffy_and_upstream_agree_on_what_a_valid_config_is() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let paths: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, text))| {
            let path = dir.path().join(format!("case{i}.yaml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    // the batch agrees with upstream's CLI (one case each way)
    assert!(upstream_check(&paths[0]).status.success());
    let refused = cases
        .iter()
        .position(|(n, _)| *n == "fill-level 0")
        .unwrap();
    assert!(!upstream_check(&paths[refused]).status.success());
    let upstream = upstream_accepts(&paths);
    let mut disagree = Vec::new();
    for (i, ((name, _), path)) in cases.iter().zip(&paths).enumerate() {
        let up = upstream[i];
        let o = duffy(Some(path), &["config", "check"]);
        let ours = o.status.success();
        if up != ours {
            disagree.push(format!(
                "{name}: upstream {}, duffy {} {}",
                if up { "accepts" } else { "refuses" },
                if ours { "accepts" } else { "refuses" },
                stderr(&o).trim()
            ));
        }
        if !ours {
            // a refusal is one line naming the file and key, exit 2
            assert_eq!(o.status.code(), Some(2), "{name}");
            let err = stderr(&o);
            assert!(
                err.trim().lines().count() == 1 && err.contains(&format!("case{i}.yaml: ")),
                "{name}: {err}"
            );
        }
    }
    // the one difference duffy keeps: it reads its own sections, which upstream refuses
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

#[test]
fn a_pool_without_provision_playbook_is_reported_by_the_scheduler() {
    let db = TestDb::migrated();
    let state = tempfile::tempdir().unwrap();
    let cfg = TestConfig::new(
        &db.url,
        &format!(
            "nodepools:\n  concrete:\n    bare:\n      fill-level: 2\n      \
             mechanism: {{type: ansible, ansible: {{topdir: /nonexistent}}}}\n    \
             unfilled: {{}}\n\
             scheduler:\n  state-dir: {}\n",
            state.path().display()
        ),
    );
    // loading warns once per pool, and still works
    let o = duffy(Some(&cfg.path), &["config", "check"]);
    ok(&o);
    let err = stderr(&o);
    assert_eq!(
        err.matches("concrete pool has no provision playbook")
            .count(),
        1,
        "{err}"
    );
    assert!(err.contains("pool=bare"), "{err}");
    assert!(
        err.contains("concrete pool has no fill-level") && err.contains("pool=unfilled"),
        "{err}"
    );

    let o = output_within(
        duffy_cmd(Some(&cfg.path), &["scheduler", "--once"]),
        std::time::Duration::from_secs(60),
    );
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("pool bare has no provision playbook"), "{err}");
    assert_eq!(db.one("SELECT count(*) FROM nodes"), "0");
    assert_eq!(db.one("SELECT count(*) FROM duffy_jobs"), "0");

    // provisioning nodes of such a pool (an upstream worker's leftovers) fail with the reason
    db.exec(
        "INSERT INTO nodes (state, pool, reusable, created_at) \
         VALUES ('provisioning', 'bare', false, now() - interval '1 day')",
    );
    let o = output_within(
        duffy_cmd(Some(&cfg.path), &["scheduler", "--once"]),
        std::time::Duration::from_secs(60),
    );
    ok(&o);
    assert_eq!(db.one("SELECT state FROM nodes"), "failed");
    let error = db.one("SELECT data->>'error' FROM nodes");
    assert!(
        error.contains("pool bare has no provision playbook"),
        "{error}"
    );
}

/// Operators run upstream and duffy side by side on one configuration while they switch (the
/// v2 → duffy take-over, #15): the upstream part of every file duffy ships (its sections
/// without duffy's own, which go into a file only duffy reads: upstream's model is closed at the
/// top) must pass upstream's validation, so duffy's keys inside upstream's sections go where
/// upstream allows extra keys (a pool's own level), never inside `mechanism`, which it closes.
#[test]
fn upstream_accepts_every_shipped_pool_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut shipped: Vec<PathBuf> = std::fs::read_dir(repo().join("etc/pools"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    shipped.sort();
    assert!(shipped.len() >= 3, "{shipped:?}");
    let mut files = Vec::new();
    for f in &shipped {
        let mut doc: serde_yaml::Mapping =
            serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for s in duffy::config::DUFFY_SECTIONS {
            doc.remove(s);
        }
        assert!(doc.contains_key("nodepools"), "{}", f.display());
        let part = dir.path().join(f.file_name().unwrap());
        std::fs::write(&part, serde_yaml::to_string(&doc).unwrap()).unwrap();
        files.push(part);
    }
    let verdicts = upstream_accepts(&files);
    for (f, ok) in files.iter().zip(verdicts) {
        assert!(
            ok,
            "upstream refuses {}: {}",
            f.display(),
            stderr(&upstream_check(f))
        );
    }
}
