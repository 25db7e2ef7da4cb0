//! Unit tests of the config loader: merging (files, documents, directories), validation of every
//! section, pool inheritance, database URLs and masking. Every error test checks the one-line
//! message `FILE: KEY.PATH: what was expected`.
//!
//! `Config::from_raw` reads `$DUFFY_DATABASE_URL`; these tests never set environment variables
//! (they run in parallel threads): the override is tested by `tests/config_cli.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use super::*;

const MECH: &str = "mechanism: {type: ansible, ansible: {provision: {playbook: provision.yml}}}";

/// Merge `(name, text)` sources in order, as if each were a file.
fn raw(sources: &[(&str, &str)]) -> Result<RawConfig, ConfigError> {
    let mut raw = RawConfig::default();
    for (name, text) in sources {
        raw.merge_str(text, name)?;
    }
    Ok(raw)
}

fn cfg(sources: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_raw(raw(sources)?)
}

/// A config from one source named `f.yaml`, which must be valid.
fn ok(text: &str) -> Config {
    cfg(&[("f.yaml", text)]).unwrap_or_else(|e| panic!("{text:?} should be valid: {e}"))
}

/// The error message of an invalid config.
fn err(sources: &[(&str, &str)]) -> String {
    match cfg(sources) {
        Ok(_) => panic!("{sources:?} should be invalid"),
        Err(e) => e.to_string(),
    }
}

/// The message is one line `FILE: KEY: …` that says what was expected.
#[track_caller]
fn assert_msg(msg: &str, file: &str, key: &str, expected: &str) {
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(
        msg.starts_with(&format!("{file}: {key}: ")),
        "{msg:?} should start with {file:?}: {key:?}"
    );
    assert!(
        msg.contains(expected),
        "{msg:?} should contain {expected:?}"
    );
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

fn get<'a>(c: &'a Config, path: &str) -> &'a Value {
    let mut v = c.raw.value.get(path.split('.').next().unwrap()).unwrap();
    for k in path.split('.').skip(1) {
        v = v.get(k).unwrap_or_else(|| panic!("{path}: {k} missing"));
    }
    v
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn secs(s: u64) -> Option<ConfigDuration> {
    Some(ConfigDuration(Duration::from_secs(s)))
}

// ---------------------------------------------------------------------------------------------
// merging

#[test]
fn later_files_and_documents_win_and_mappings_merge_recursively() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yaml",
        "app: {host: 0.0.0.0, port: 8081, retries: {no-attempts: 3, delay-min: 0.5}}\n\
         metaclient: {usermap: {k1: t1}, poolmap: [{pool: p1}, {pool: p2}]}\n\
         ---\n\
         app: {port: 8082}\n",
    );
    let b = write(
        dir.path(),
        "b.conf",
        "---\n\
         ---\n\
         # only a comment: an empty document\n\
         ---\n\
         app: {retries: {no-attempts: 7}}\n\
         metaclient: {usermap: {k2: t2}, poolmap: [{pool: p3}]}\n\
         ---\n\
         defaults: {node-quota: 4}\n\
         ...\n",
    );
    let c = load_from(&[a.as_path(), b.as_path()]).unwrap();
    assert_eq!(c.raw.files, vec![a.clone(), b.clone()]);
    assert_eq!(c.sections(), ["app", "metaclient", "defaults"]);
    // scalars: later wins (second document of a, then b); untouched keys stay
    assert_eq!(c.app.host, "0.0.0.0");
    assert_eq!(c.app.port, 8082);
    let r = c.app.retries.as_ref().unwrap();
    assert_eq!(r.no_attempts, 7);
    assert_eq!(r.delay_min, 0.5);
    // mappings merge, lists are replaced
    let m = c.metaclient.as_ref().unwrap();
    assert_eq!(m.usermap.get("k1"), Some("t1"));
    assert_eq!(m.usermap.get("k2"), Some("t2"));
    let pools: Vec<&str> = m.poolmap.iter().map(|p| p.pool.as_str()).collect();
    assert_eq!(pools, ["p3"]);
    assert_eq!(c.defaults.node_quota, Some(4));

    // the reverse order gives the reverse result
    let c = load_from(&[b.as_path(), a.as_path()]).unwrap();
    assert_eq!(c.sections(), ["app", "metaclient", "defaults"]);
    assert_eq!(c.app.retries.as_ref().unwrap().no_attempts, 3);
    let pools: Vec<String> = c
        .metaclient
        .unwrap()
        .poolmap
        .into_iter()
        .map(|p| p.pool)
        .collect();
    assert_eq!(pools, ["p1", "p2"]);
}

#[test]
fn key_order_is_first_appearance() {
    let c = cfg(&[
        ("1.yaml", "defaults: {node-quota: 1}\napp: {port: 1}"),
        (
            "2.yaml",
            "tasks: {}\napp: {port: 2}\ndefaults: {node-quota: 2}",
        ),
    ])
    .unwrap();
    assert_eq!(c.sections(), ["defaults", "app", "tasks"]);
    assert_eq!(c.app.port, 2);
    assert_eq!(c.defaults.node_quota, Some(2));
}

#[test]
fn empty_files_and_documents_are_skipped() {
    for text in [
        "",
        "\n",
        "# nothing\n",
        "---\n",
        "---\n---\n...\n",
        "~\n",
        "--- ~\n",
    ] {
        let c = ok(text);
        assert!(c.raw.value.is_empty(), "{text:?}");
        assert!(c.sections().is_empty());
        assert!(c.nodepools.is_empty());
    }
    let c = ok("---\n---\napp: {port: 1}\n---\n---\n# x\n---\napp: {host: h}\n---\n");
    assert_eq!((c.app.host.as_str(), c.app.port), ("h", 1));
}

#[test]
fn a_directory_contributes_its_yaml_files_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "20_b.yml",
        "app: {port: 2002}\ndefaults: {node-quota: 20}",
    );
    write(
        d,
        "10_a.yaml",
        "app: {port: 1001, host: from-10}\nmetaclient: {}",
    );
    write(
        d,
        "15_c.yaml",
        "app: {port: 1505}\ndefaults: {node-quota: 15}",
    );
    // not contributing: other extensions, a directory named *.yaml, hidden suffixes
    write(d, "99_z.yaml.bak", "app: {port: 9999}");
    write(d, "README.md", "app: [");
    write(d, "50_notes.txt", "not: yaml: at: all: [");
    write(d, "60.YAMLX", "app: {port: 6006}");
    std::fs::create_dir(d.join("70_sub.yaml")).unwrap();
    write(&d.join("70_sub.yaml"), "inner.yaml", "app: {port: 7007}");

    let c = load_from(&[d]).unwrap();
    let names: Vec<String> = c
        .raw
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["10_a.yaml", "15_c.yaml", "20_b.yml"]);
    assert_eq!(c.app.port, 2002);
    assert_eq!(c.app.host, "from-10");
    assert_eq!(c.defaults.node_quota, Some(20));
    assert_eq!(c.sections(), ["app", "metaclient", "defaults"]);

    // a file after the directory overrides it; a directory after a file overrides the file
    let other = tempfile::tempdir().unwrap();
    let f = write(other.path(), "override", "app: {port: 4242}");
    let c = load_from(&[d, f.as_path()]).unwrap();
    assert_eq!(c.app.port, 4242);
    assert_eq!(c.raw.files.last(), Some(&f));
    let c = load_from(&[f.as_path(), d]).unwrap();
    assert_eq!(c.app.port, 2002);
    assert_eq!(c.raw.files.first(), Some(&f));
}

#[test]
fn an_empty_directory_is_an_empty_config() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "notes.txt", "app: 5");
    let c = load_from(&[dir.path()]).unwrap();
    assert!(c.raw.files.is_empty());
    assert!(c.raw.value.is_empty());
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let e = load_from(&[missing.as_path()]).unwrap_err();
    assert!(matches!(e, ConfigError::NotFound(_)));
    assert_eq!(
        e.to_string(),
        format!("{}: no such config file or directory", missing.display())
    );
}

#[test]
fn replacing_a_mapping_by_a_scalar_or_the_reverse_is_an_error() {
    // across files: names the later file, the key path and the earlier file
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "10_a.yaml", "app: {retries: {no-attempts: 3}}");
    let b = write(dir.path(), "20_b.yaml", "app: {retries: 5}");
    let e = load_from(&[dir.path()]).unwrap_err().to_string();
    assert_msg(
        &e,
        &b.display().to_string(),
        "app.retries",
        "cannot replace a mapping with a number when merging",
    );
    assert!(e.contains(&a.display().to_string()), "{e}");

    // scalar replaced by a mapping
    let e = err(&[
        ("one.yaml", "app: {host: h}"),
        ("two.yaml", "app: {host: {x: 1}}"),
    ]);
    assert_msg(
        &e,
        "two.yaml",
        "app.host",
        "cannot replace a string with a mapping when merging",
    );
    assert!(e.contains("(the earlier value comes from one.yaml)"), "{e}");
    // a mapping cannot be nulled out
    let e = err(&[("one.yaml", "app: {host: h}"), ("two.yaml", "app: ~")]);
    assert_msg(&e, "two.yaml", "app", "cannot replace a mapping with null");
    // a list is not a mapping either
    let e = err(&[("one.yaml", "nodepools: {}"), ("two.yaml", "nodepools: []")]);
    assert_msg(
        &e,
        "two.yaml",
        "nodepools",
        "cannot replace a mapping with a list",
    );
    // between documents of one file
    let e = err(&[(
        "multi.yaml",
        "nodepools: {concrete: {p: {mechanism: {type: ansible}}}}\n---\n\
         nodepools: {concrete: {p: {mechanism: ansible}}}",
    )]);
    assert_msg(
        &e,
        "multi.yaml",
        "nodepools.concrete.p.mechanism",
        "cannot replace a mapping with a string when merging",
    );
    assert!(!e.contains("earlier value"), "same file: {e}");
}

#[test]
fn scalars_and_lists_replace_each_other() {
    let c = cfg(&[
        ("a.yaml", "app: {logging: [1, 2], host: h}"),
        ("b.yaml", "app: {logging: x, host: [h]}"),
        ("c.yaml", "app: {logging: ~, host: k}"),
    ])
    .unwrap();
    assert_eq!(c.app.host, "k");
    assert_eq!(c.app.logging, None);
}

#[test]
fn a_document_must_be_a_mapping() {
    let e = err(&[("f.yaml", "app: {}\n---\n- a\n- b\n")]);
    assert_msg(
        &e,
        "f.yaml",
        "<document 2>",
        "expected a mapping at the top level, got a list",
    );
    let e = err(&[("g.yaml", "just a string")]);
    assert_msg(&e, "g.yaml", "<document 1>", "got a string");
}

#[test]
fn invalid_yaml_names_the_file_and_position() {
    let e = err(&[("ok.yaml", "app: {}"), ("bad.yaml", "app: {host: [1}\n")]);
    assert!(e.starts_with("bad.yaml: invalid YAML: "), "{e}");
    assert!(e.contains("line 1"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = err(&[("dup.yaml", "app: {host: a, host: b}")]);
    assert!(e.starts_with("dup.yaml: invalid YAML: "), "{e}");
    assert!(e.contains("duplicate"), "{e}");
}

#[test]
fn yaml_merge_keys_are_resolved_like_pyyaml() {
    let c = ok(&format!(
        "nodepools:\n  abstract:\n    base: &base\n      arch: x86_64\n      {MECH}\n  concrete:\n    \
         p:\n      <<: *base\n      fill-level: 2\n      arch: aarch64\n"
    ));
    let p = c.pool("p").unwrap();
    assert_eq!(p.vars.get("arch"), Some(&Value::from("aarch64")));
    assert!(p.vars.get("<<").is_none());
    assert_eq!(
        p.mechanism
            .as_ref()
            .unwrap()
            .provision
            .as_ref()
            .unwrap()
            .playbook,
        "provision.yml"
    );
}

#[test]
fn errors_name_the_file_that_set_the_key() {
    // app.port was set by the first file; later files merged other keys into `app`
    let e = err(&[
        ("first.yaml", "app: {port: seventy}"),
        ("second.yaml", "app: {host: h}"),
        ("third.yaml", "defaults: {node-quota: 1}"),
    ]);
    assert_msg(&e, "first.yaml", "app.port", "expected u16");
    // … and the last file that set it wins
    let e = err(&[
        ("first.yaml", "app: {port: seventy}"),
        ("second.yaml", "app: {port: eighty}"),
    ]);
    assert_msg(&e, "second.yaml", "app.port", "\"eighty\"");
    // a missing key: every source is named
    let e = err(&[
        ("first.yaml", "ipmi: {credentials: {bmc: {user: u}}}"),
        ("second.yaml", "ipmi: {timeout: 3}"),
    ]);
    assert_msg(
        &e,
        "first.yaml",
        "ipmi.credentials.bmc",
        "missing field `password`",
    );
}

// ---------------------------------------------------------------------------------------------
// top-level keys and sections

#[test]
fn unknown_top_level_key_lists_the_allowed_ones() {
    let e = err(&[("a.yaml", "app: {}"), ("b.yaml", "nodepool: {}")]);
    assert_msg(
        &e,
        "b.yaml",
        "nodepool",
        "unknown top-level key, expected one of client, app, tasks, database, defaults, \
         metaclient, nodepools, scheduler, inventory, ipmi, events",
    );
}

#[test]
fn every_known_section_is_accepted() {
    let c = ok(
        "client: {url: 'https://duffy.example.org', auth: {name: t, key: 8e06b6e1-fb32-4348-9342-9509e7507a1e}}\n\
         app: {host: h, port: 8080, loglevel: debug, logging: {version: 1}, retries: {no-attempts: 2}}\n\
         tasks: {celery: {broker_url: 'redis://localhost:6379', result_backend: 'redis://localhost:6379'}, \
                 locking: {url: 'redis://localhost:6379'}, \
                 periodic: {fill-pools: {interval: 300}, expire-sessions: {interval: 300}}}\n\
         database: {sqlalchemy: {sync_url: 'postgresql://d:pw@h/d', isolation_level: SERIALIZABLE}}\n\
         defaults: {session-lifetime: 6h, session-lifetime-max: 12h, node-quota: 10, retries: {delay-max: 2}}\n\
         metaclient: {host: h, port: 9091, loglevel: warning, dest: 'http://127.0.0.1:8080', \
                      usermap: {k: t}, poolmap: [{pool: p, ver: '9', arch: x86_64, flavor: small}], \
                      mangle_hostname: '{{ hostname }}'}\n\
         nodepools: {abstract: {}, concrete: {}}\n\
         scheduler: {fill-interval: 1m, expire-interval: 30, lease: 10m, max-attempts: 3, \
                     playbook-timeout: 2h, ansible-playbook: /usr/bin/ansible-playbook, job-log-dir: /var/log/duffy}\n\
         inventory: {states: [ready, deployed], include-retired: true, group-prefix: duffy_, \
                     attributes: {flavour: {pool-regex: '^[^-]+-[^-]+-([^-]+)-'}}, artifacts-group: artifacts}\n\
         ipmi: {timeout: 10s, retries: 1, credentials: {bmc: {user: admin, password: pw}}}\n\
         events: {channel: other}\n",
    );
    assert_eq!(c.sections().len(), 11);
    assert!(c.has_tasks);
    assert_eq!(c.app.loglevel, LogLevel::Debug);
    assert_eq!(c.metaclient.as_ref().unwrap().port, 9091);
    assert_eq!(c.scheduler.fill_interval, secs(60).unwrap());
    assert_eq!(c.scheduler.expire_interval, secs(30).unwrap());
    assert_eq!(c.ipmi.timeout, secs(10).unwrap());
    assert_eq!(c.ipmi.credentials["bmc"].user, "admin");
    assert_eq!(c.events.channel, "other");
    assert_eq!(c.inventory.group_prefix, "duffy_");
    assert_eq!(
        c.client
            .as_ref()
            .unwrap()
            .auth
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some("t")
    );
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let c = ok("");
    assert_eq!(c.app.host, "127.0.0.1");
    assert_eq!(c.app.port, 8080);
    assert_eq!(c.app.loglevel, LogLevel::Info);
    assert!(c.metaclient.is_none() && c.client.is_none());
    assert!(!c.has_tasks);
    assert_eq!(c.events.channel, "duffy_events");
    assert_eq!(c.scheduler.fill_interval, secs(300).unwrap());
    let c = ok("metaclient: {}\napp: ~");
    assert_eq!(c.metaclient.unwrap().port, 9090);
    assert_eq!(c.app.port, 8080);
}

#[test]
fn unknown_keys_inside_sections_are_rejected_with_their_path() {
    let cases: &[(&str, &str, &str)] = &[
        ("app: {hots: localhost}", "app.hots", "unknown field `hots`, expected one of `host`"),
        (
            "app: {retries: {attempts: 3}}",
            "app.retries.attempts",
            "unknown field `attempts`",
        ),
        ("database: {url: x}", "database.url", "unknown field `url`, expected `sqlalchemy`"),
        ("defaults: {quota: 1}", "defaults.quota", "unknown field `quota`"),
        (
            "metaclient: {poolmap: [{pool: a}, {pool: b, release: 9}]}",
            "metaclient.poolmap[1].release",
            "unknown field `release`",
        ),
        ("client: {auth: {user: x}}", "client.auth.user", "unknown field `user`"),
        ("scheduler: {fill: 1}", "scheduler.fill", "unknown field `fill`"),
        ("inventory: {state: [ready]}", "inventory.state", "unknown field `state`"),
        ("ipmi: {credentials: {b: {user: u, password: p, port: 1}}}", "ipmi.credentials.b.port", "unknown field `port`"),
        ("events: {chanel: x}", "events.chanel", "unknown field `chanel`"),
        ("nodepools: {virtual: {}}", "nodepools.virtual", "unknown key, expected abstract or concrete"),
        (
            "nodepools: {abstract: {a: {mechanism: {type: ansible, ansible: {top-dir: /x}}}}}",
            "nodepools.abstract.a.mechanism.ansible.top-dir",
            "unknown key, expected topdir, extra-vars, provision or deprovision",
        ),
        (
            "nodepools: {abstract: {a: {mechanism: {type: ansible, ansible: {reconcile: {}}}}}}",
            "nodepools.abstract.a.mechanism.ansible.reconcile",
            "duffy's reconcile playbook is the pool key `reconcile: {playbook: …}` (upstream refuses unknown keys under mechanism)",
        ),
        (
            "nodepools: {abstract: {a: {reconcile: {}, mechanism: {type: ansible, ansible: {}}}}}",
            "nodepools.abstract.a.reconcile.playbook",
            "required: the playbook to run",
        ),
        (
            "nodepools: {abstract: {a: {mechanism: {type: ansible, ansible: {provision: {playbook: p, vars: {}}}}}}}",
            "nodepools.abstract.a.mechanism.ansible.provision.vars",
            "unknown key, expected playbook or extra-vars",
        ),
    ];
    for (text, key, expected) in cases {
        assert_msg(&err(&[("s.yaml", text)]), "s.yaml", key, expected);
    }
}

#[test]
fn wrong_types_in_sections_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("app: 5", "app", "expected struct AppConfig"),
        ("app: {port: 70000}", "app.port", "expected u16"),
        (
            "app: {port: 0}",
            "app.port",
            "expected a port number 1-65535, got 0",
        ),
        (
            "metaclient: {port: 0}",
            "metaclient.port",
            "expected a port number 1-65535",
        ),
        (
            "app: {loglevel: verbose}",
            "app.loglevel",
            "unknown variant `verbose`, expected one of",
        ),
        (
            "app: {retries: {no-attempts: 0}}",
            "app.retries.no-attempts",
            "expected an integer >= 1",
        ),
        (
            "defaults: {retries: {delay-min: -1}}",
            "defaults.retries.delay-min",
            "expected a number >= 0",
        ),
        (
            "defaults: {retries: {delay-backoff-factor: 0.5}}",
            "defaults.retries.delay-backoff-factor",
            "expected a number >= 1",
        ),
        (
            "app: {header-read-timeout: 0}",
            "app.header-read-timeout",
            "expected a duration > 0, got 0",
        ),
        (
            "app: {idle-timeout: 0s}",
            "app.idle-timeout",
            "expected a duration > 0, got 0",
        ),
        (
            "app: {body-read-timeout: soon}",
            "app.body-read-timeout",
            "expected a duration like 6h",
        ),
        (
            "app: {shutdown-timeout: 0}",
            "app.shutdown-timeout",
            "expected a duration > 0, got 0",
        ),
        (
            "app: {max-connections: 0}",
            "app.max-connections",
            "expected an integer > 0, got 0",
        ),
        (
            "app: {max-connections: -5}",
            "app.max-connections",
            "invalid value",
        ),
        (
            "defaults: {node-quota: 0}",
            "defaults.node-quota",
            "expected an integer > 0, got 0",
        ),
        (
            "defaults: {node-quota: -3}",
            "defaults.node-quota",
            "expected u32",
        ),
        (
            "metaclient: {usermap: [a]}",
            "metaclient.usermap",
            "expected a YAML mapping",
        ),
        (
            "metaclient: {usermap: {k: 5}}",
            "metaclient.usermap",
            "expected a string value",
        ),
        (
            "metaclient: {poolmap: [{arch: x}]}",
            "metaclient.poolmap[0]",
            "missing field `pool`",
        ),
        (
            "metaclient: {dest: 'ftp://x'}",
            "metaclient.dest",
            "expected an http(s) URL",
        ),
        (
            "client: {url: 'localhost:8080'}",
            "client.url",
            "expected an http(s) URL",
        ),
        (
            "client: {auth: {key: not-a-uuid}}",
            "client.auth.key",
            "UUID",
        ),
        (
            "inventory: {states: [bogus]}",
            "inventory.states[0]",
            "unknown variant `bogus`",
        ),
        ("tasks: 5", "tasks", "expected a mapping, got a number"),
        (
            "nodepools: 5",
            "nodepools",
            "expected a mapping, got a number",
        ),
        (
            "nodepools: {concrete: [a]}",
            "nodepools.concrete",
            "expected a mapping of pool names, got a list",
        ),
    ];
    for (text, key, expected) in cases {
        assert_msg(&err(&[("t.yaml", text)]), "t.yaml", key, expected);
    }
}

#[test]
fn tasks_is_accepted_as_an_open_map() {
    let c =
        ok("tasks: {celery: {anything: [1, 2], worker_redirect_stdouts_level: INFO}, other: x}");
    assert!(c.has_tasks);
    assert_eq!(c.sections(), ["tasks"]);
    let c = ok("tasks: ~");
    assert!(c.has_tasks);
    assert!(!ok("app: {}").has_tasks);
}

#[test]
fn secret_values_are_not_echoed_in_errors() {
    let e = err(&[(
        "s.yaml",
        "ipmi: {credentials: {b: {user: u, password: 271828}}}",
    )]);
    assert_msg(
        &e,
        "s.yaml",
        "ipmi.credentials.b.password",
        "expected a string",
    );
    assert!(!e.contains("271828"), "{e}");
    let e = err(&[("s.yaml", "client: {auth: {key: 314159}}")]);
    assert_msg(&e, "s.yaml", "client.auth.key", "expected");
    assert!(!e.contains("314159"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// durations

#[test]
fn session_lifetime_accepts_config_durations() {
    let cases: &[(&str, u64)] = &[
        ("6h", 6 * 3600),
        ("1h30m", 5400),
        ("21600", 21600),
        ("'90'", 90),
        ("'+2w3d'", 17 * 86400),
        ("' 1H 30M '", 5400),
        ("0", 0),
    ];
    for (text, want) in cases {
        let c = ok(&format!(
            "defaults: {{session-lifetime: {text}, session-lifetime-max: {text}}}"
        ));
        assert_eq!(c.defaults.session_lifetime, secs(*want), "{text}");
        assert_eq!(c.defaults.session_lifetime_max, secs(*want), "{text}");
    }
    let c = ok("defaults: {session-lifetime: 1.5}");
    assert_eq!(
        c.defaults.session_lifetime,
        Some(ConfigDuration(Duration::from_millis(1500)))
    );
    assert_eq!(ok("defaults: {}").defaults.session_lifetime, None);
}

#[test]
fn session_lifetime_rejects_other_values() {
    for text in ["30m2h", "-1h", "''", "6x", "h", "'1h 30'", "'-90'"] {
        let e = err(&[("d.yaml", &format!("defaults: {{session-lifetime: {text}}}"))]);
        assert_msg(
            &e,
            "d.yaml",
            "defaults.session-lifetime",
            "expected a duration like 6h, 1h30m or a number of seconds",
        );
    }
    for text in ["-1", "-0.5", "1e300", ".inf", ".nan"] {
        let e = err(&[(
            "d.yaml",
            &format!("defaults: {{session-lifetime-max: {text}}}"),
        )]);
        assert_msg(
            &e,
            "d.yaml",
            "defaults.session-lifetime-max",
            "expected a duration (a number of seconds >= 0)",
        );
    }
    for text in ["true", "[6h]", "{h: 6}"] {
        let e = err(&[("d.yaml", &format!("defaults: {{session-lifetime: {text}}}"))]);
        assert_msg(
            &e,
            "d.yaml",
            "defaults.session-lifetime",
            "expected a duration, got",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// database URL

/// The URL from the config files alone (`$DUFFY_DATABASE_URL` ignored).
fn file_url(text: &str) -> Result<String, ConfigError> {
    let mut c = cfg(&[("db.yaml", text)])?;
    c.database_url_override = None;
    c.database_url()
}

#[test]
fn sync_url_is_preferred_and_the_driver_stripped() {
    assert_eq!(
        file_url(
            "database: {sqlalchemy: {async_url: 'postgresql+asyncpg://a:pw@async/db', \
             sync_url: 'postgresql+psycopg://s:pw@sync:5433/db'}}"
        )
        .unwrap(),
        "postgresql://s:pw@sync:5433/db"
    );
    assert_eq!(
        file_url("database: {sqlalchemy: {async_url: 'postgresql+asyncpg://a:pw@async/db'}}")
            .unwrap(),
        "postgresql://a:pw@async/db"
    );
    assert_eq!(
        file_url("database: {sqlalchemy: {sync_url: 'postgres://u@h/db', pool_size: 5}}").unwrap(),
        "postgres://u@h/db"
    );
    // later files override earlier ones key by key
    let mut c = cfg(&[
        (
            "a.yaml",
            "database: {sqlalchemy: {sync_url: 'postgresql://old/db'}}",
        ),
        (
            "b.yaml",
            "database: {sqlalchemy: {sync_url: 'postgresql://new/db'}}",
        ),
    ])
    .unwrap();
    c.database_url_override = None;
    assert_eq!(c.database_url().unwrap(), "postgresql://new/db");
}

#[test]
fn a_bad_database_url_names_its_key() {
    let e = file_url("database: {sqlalchemy: {sync_url: 'mysql://u:hunter2@h/db'}}").unwrap_err();
    let e = e.to_string();
    assert_msg(
        &e,
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "unsupported database URL scheme \"mysql\" (expected postgresql:// or postgres://)",
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = file_url("database: {sqlalchemy: {async_url: 'sqlite+aiosqlite:///x.db'}}")
        .unwrap_err()
        .to_string();
    assert_msg(&e, "db.yaml", "database.sqlalchemy.async_url", "\"sqlite\"");
    let e = file_url("database: {sqlalchemy: {sync_url: 5432}}")
        .unwrap_err()
        .to_string();
    assert_msg(
        &e,
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "expected a database URL string, got a number",
    );
    let e = file_url("database: {sqlalchemy: {sync_url: ''}}")
        .unwrap_err()
        .to_string();
    assert_msg(
        &e,
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "got an empty string",
    );
    let e = file_url("database: {sqlalchemy: {sync_url: 'localhost/duffy'}}")
        .unwrap_err()
        .to_string();
    assert_msg(
        &e,
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "invalid database URL",
    );
    let e = file_url("database: {sqlalchemy: [x]}")
        .unwrap_err()
        .to_string();
    assert_msg(&e, "db.yaml", "database.sqlalchemy", "expected");
}

#[test]
fn a_missing_database_url_says_where_to_put_it() {
    let e = file_url("app: {}").unwrap_err().to_string();
    assert_msg(
        &e,
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "not set: duffy needs a PostgreSQL URL here or in $DUFFY_DATABASE_URL",
    );
    let e = file_url("database: {sqlalchemy: {isolation_level: SERIALIZABLE}}").unwrap_err();
    assert_msg(
        &e.to_string(),
        "db.yaml",
        "database.sqlalchemy.sync_url",
        "not set",
    );
    // several files: all are named; none: says so
    let mut c = cfg(&[("a.yaml", "app: {}"), ("b.yaml", "defaults: {}")]).unwrap();
    c.database_url_override = None;
    let e = c.database_url().unwrap_err().to_string();
    assert_msg(
        &e,
        "a.yaml, b.yaml",
        "database.sqlalchemy.sync_url",
        "not set",
    );
    let mut c = Config::from_raw(RawConfig::default()).unwrap();
    c.database_url_override = None;
    let e = c.database_url().unwrap_err().to_string();
    assert_msg(
        &e,
        "(no configuration file)",
        "database.sqlalchemy.sync_url",
        "not set",
    );
}

// ---------------------------------------------------------------------------------------------
// node pools

const POOLS: &str = "
nodepools:
  abstract:
    physical:
      type: physical
      fill-level: 1
      run-parallel: false
      mechanism:
        type: ansible
        ansible:
          topdir: /etc/duffy/ansible
          extra-vars: {api_username: duffy, nested: {a: 1, b: 2}}
          provision: {playbook: playbooks/provision.yml, extra-vars: {x: 1}}
          deprovision: {playbook: playbooks/deprovision.yml}
    physical-x86_64:
      extends: physical
      architecture: x86_64
      reuse-nodes:
        architecture: '{{ architecture }}'
        slots: 2
      mechanism:
        ansible:
          extra-vars: {nested: {b: 3}}
  concrete:
    metal-ec2-c5n-centos-9s-x86_64:
      extends: physical-x86_64
      fill-level: 5
      contextualize: none
      tags: [one]
      mechanism:
        ansible:
          provision: {playbook: playbooks/provision-ec2.yml}
    metal-plain:
      extends: physical
      architecture: aarch64
      run-parallel: true
      reuse-nodes: false
      contextualize: ssh
    copy:
      extends: metal-plain
      name: not-my-name
";

#[test]
fn pools_inherit_along_extends_chains() {
    let c = ok(POOLS);
    let names: Vec<&str> = c.nodepools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "physical",
            "physical-x86_64",
            "metal-ec2-c5n-centos-9s-x86_64",
            "metal-plain",
            "copy"
        ]
    );
    let concrete: Vec<&str> = c.concrete_pools().map(|p| p.name.as_str()).collect();
    assert_eq!(
        concrete,
        ["metal-ec2-c5n-centos-9s-x86_64", "metal-plain", "copy"]
    );

    let base = c.pool("physical").unwrap();
    assert_eq!(base.kind, PoolKind::Abstract);
    assert_eq!(base.vars.get("name"), Some(&Value::from("physical")));

    let p = c.pool("metal-ec2-c5n-centos-9s-x86_64").unwrap();
    assert_eq!(p.kind, PoolKind::Concrete);
    assert_eq!(p.fill_level, Some(5));
    assert!(!p.run_parallel, "inherited from the grandparent");
    assert_eq!(p.contextualize, Contextualize::None);
    let reuse = p.reuse_nodes.as_ref().unwrap();
    assert_eq!(
        reuse.get("architecture"),
        Some(&Value::from("{{ architecture }}"))
    );
    assert_eq!(reuse.get("slots"), Some(&Value::from(2)));
    // the pool's variables: inherited + own, its own name, no `extends`
    assert_eq!(
        p.vars.get("name"),
        Some(&Value::from("metal-ec2-c5n-centos-9s-x86_64"))
    );
    assert_eq!(p.vars.get("architecture"), Some(&Value::from("x86_64")));
    assert_eq!(p.vars.get("type"), Some(&Value::from("physical")));
    assert!(p.vars.get("extends").is_none());
    // mechanism: deep-merged across three levels
    let m = p.mechanism.as_ref().unwrap();
    assert_eq!(m.topdir.as_deref(), Some(Path::new("/etc/duffy/ansible")));
    assert_eq!(
        m.provision.as_ref().unwrap().playbook,
        "playbooks/provision-ec2.yml"
    );
    assert_eq!(
        yaml(&Value::Mapping(
            m.provision.as_ref().unwrap().extra_vars.clone()
        )),
        "x: 1\n",
        "kept from the parent's provision map"
    );
    assert_eq!(
        m.deprovision.as_ref().map(|d| d.playbook.as_str()),
        Some("playbooks/deprovision.yml")
    );
    assert_eq!(
        yaml(&Value::Mapping(m.extra_vars.clone())),
        "api_username: duffy\nnested:\n  a: 1\n  b: 3\n"
    );

    let plain = c.pool("metal-plain").unwrap();
    assert!(plain.run_parallel, "child overrides");
    assert!(
        plain.reuse_nodes.is_none(),
        "explicitly false, nothing inherited"
    );
    assert_eq!(plain.contextualize, Contextualize::Ssh);
    assert_eq!(plain.fill_level, Some(1));
    assert_eq!(
        plain.vars.get("architecture"),
        Some(&Value::from("aarch64"))
    );
    assert_eq!(
        plain
            .mechanism
            .as_ref()
            .unwrap()
            .provision
            .as_ref()
            .unwrap()
            .playbook,
        "playbooks/provision.yml"
    );

    // a concrete pool may extend a concrete pool; `name` is always the pool's own
    let copy = c.pool("copy").unwrap();
    assert_eq!(copy.vars.get("name"), Some(&Value::from("copy")));
    assert_eq!(copy.vars.get("architecture"), Some(&Value::from("aarch64")));
    assert!(c.pool("not-my-name").is_none());
}

#[test]
fn pool_defaults() {
    let c = ok(&format!("nodepools: {{concrete: {{p: {{{MECH}}}}}}}"));
    let p = c.pool("p").unwrap();
    assert_eq!(p.fill_level, None);
    assert!(p.run_parallel);
    assert!(p.reuse_nodes.is_none());
    assert_eq!(p.contextualize, Contextualize::Ssh);
    let m = p.mechanism.as_ref().unwrap();
    assert!(m.topdir.is_none() && m.deprovision.is_none() && m.extra_vars.is_empty());
    // abstract pools need no mechanism; a partial one is fine
    let c = ok("nodepools: {abstract: {a: {}, b: ~, c: {mechanism: {type: ansible, ansible: {topdir: /x}}}}}");
    assert!(c.nodepools.iter().all(|p| p.mechanism.is_none()));
    assert!(ok("nodepools: {abstract: ~, concrete: ~}")
        .nodepools
        .is_empty());
}

#[test]
fn pools_from_several_files() {
    let c = cfg(&[
        ("10_abstract.yaml", "nodepools: {abstract: {base: {fill-level: 1, mechanism: {type: ansible, ansible: {provision: {playbook: a.yml}}}}}}"),
        ("70_nodepools.yaml", "nodepools: {concrete: {p: {extends: base}}}"),
        ("80_override.yaml", "nodepools: {concrete: {p: {fill-level: 9}}}"),
    ])
    .unwrap();
    assert_eq!(c.pool("p").unwrap().fill_level, Some(9));
    // an error in a pool names the file that defined it
    let e = err(&[
        (
            "70_nodepools.yaml",
            &format!("nodepools: {{concrete: {{p: {{fill-level: 1, {MECH}}}}}}}"),
        ),
        (
            "80_override.yaml",
            "nodepools: {concrete: {p: {fill-level: 0}}}",
        ),
    ]);
    assert_msg(
        &e,
        "80_override.yaml",
        "nodepools.concrete.p.fill-level",
        "expected an integer > 0, got 0",
    );
}

#[test]
fn extends_may_name_any_pool_but_not_a_cycle() {
    // upstream's check accepts a pool defined later (even in a later section): so does duffy
    let c = ok(&format!(
        "nodepools: {{concrete: {{a: {{extends: b, fill-level: 2}}, b: {{{MECH}}}}}}}"
    ));
    assert_eq!(
        c.pool("a").unwrap().mechanism,
        c.pool("b").unwrap().mechanism
    );
    let c = ok(&format!(
        "nodepools: {{concrete: {{c: {{extends: base}}}}, abstract: {{base: {{fill-level: 3, {MECH}}}}}}}"
    ));
    assert_eq!(c.pool("c").unwrap().fill_level, Some(3));
    assert_eq!(
        c.nodepools
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["c", "base"],
        "config order is kept"
    );
    let e = err(&[("p.yaml", "nodepools: {abstract: {a: {extends: nowhere}}}")]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.abstract.a.extends",
        "unknown pool \"nowhere\"",
    );
    let e = err(&[("p.yaml", "nodepools: {abstract: {a: {extends: a}}}")]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.abstract.a.extends",
        "pool \"a\" leads back to this pool (a cycle)",
    );
    let e = err(&[(
        "p.yaml",
        "nodepools: {abstract: {a: {extends: c}, b: {extends: a}, c: {extends: b}}}",
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.abstract.b.extends",
        "pool \"a\" leads back to this pool (a cycle)",
    );
    // upstream's model types `extends` as one string as well
    let e = err(&[(
        "p.yaml",
        "nodepools: {abstract: {a: {}, b: {extends: [a]}}}",
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.abstract.b.extends",
        "expected a pool name, got a list",
    );
}

#[test]
fn a_pool_defined_twice_is_an_error() {
    let e = err(&[(
        "p.yaml",
        &format!("nodepools: {{abstract: {{twin: {{}}}}, concrete: {{twin: {{{MECH}}}}}}}"),
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.concrete.twin",
        "pool defined twice (pool names are global)",
    );
}

#[test]
fn a_child_cannot_null_out_an_inherited_mapping() {
    let e = err(&[(
        "p.yaml",
        "nodepools:\n  abstract:\n    base: {mechanism: {type: ansible, ansible: {provision: {playbook: p}, deprovision: {playbook: d}}}}\n  \
         concrete:\n    p: {extends: base, mechanism: {ansible: {deprovision: ~}}}\n",
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.concrete.p.mechanism.ansible.deprovision",
        "cannot replace a mapping with null",
    );
    // without an inherited deprovision, `deprovision: ~` is fine
    let c = ok("nodepools: {concrete: {p: {mechanism: {type: ansible, ansible: {provision: {playbook: p}, deprovision: ~}}}}}");
    assert!(c
        .pool("p")
        .unwrap()
        .mechanism
        .as_ref()
        .unwrap()
        .deprovision
        .is_none());
    // `reuse-nodes: false` cannot switch off an inherited map either
    let e = err(&[(
        "p.yaml",
        &format!("nodepools: {{abstract: {{a: {{reuse-nodes: {{arch: x}}}}}}, concrete: {{b: {{extends: a, reuse-nodes: false, {MECH}}}}}}}"),
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.concrete.b.reuse-nodes",
        "cannot replace a mapping with a boolean",
    );
    // a scalar over an inherited mapping
    let e = err(&[(
        "p.yaml",
        &format!("nodepools: {{abstract: {{a: {{{MECH}}}}}, concrete: {{b: {{extends: a, mechanism: none}}}}}}"),
    )]);
    assert_msg(
        &e,
        "p.yaml",
        "nodepools.concrete.b.mechanism",
        "cannot replace a mapping with a string",
    );
}

#[test]
fn concrete_pools_without_a_provision_playbook_load() {
    // upstream's model makes every level optional: such pools load (the CLI warns, the
    // scheduler reports "pool P has no provision playbook" when it would fill one)
    for def in [
        "{}",
        "~",
        "{mechanism: ~}",
        "{mechanism: {type: ansible}}",
        "{mechanism: {type: ansible, ansible: {topdir: /x}}}",
        "{mechanism: {type: ansible, ansible: {provision: ~, deprovision: {playbook: d.yml}}}}",
    ] {
        let c = ok(&format!("nodepools: {{concrete: {{vm: {def}}}}}"));
        let m = c.pool("vm").unwrap().mechanism.as_ref().unwrap();
        assert!(m.provision.is_none(), "{def}");
    }
    // no `type`: ansible, the only mechanism there is
    let c = ok("nodepools: {concrete: {vm: {mechanism: {ansible: {provision: {playbook: p}}}}}}");
    let m = c.pool("vm").unwrap().mechanism.as_ref().unwrap();
    assert_eq!(m.provision.as_ref().unwrap().playbook, "p");
    // what upstream's check refuses stays refused
    let cases: &[(&str, &str, &str)] = &[
        (
            "{mechanism: ansible}",
            "mechanism",
            "expected a mapping, got a string",
        ),
        (
            "{mechanism: {type: openstack}}",
            "mechanism.type",
            "expected ansible, got \"openstack\"",
        ),
        (
            "{mechanism: {type: 1}}",
            "mechanism.type",
            "expected a string, got a number",
        ),
        (
            "{mechanism: {type: ansible, playbook: p}}",
            "mechanism.playbook",
            "unknown key, expected type or ansible",
        ),
        (
            "{mechanism: {type: ansible, ansible: 5}}",
            "mechanism.ansible",
            "expected a mapping",
        ),
        (
            "{mechanism: {type: ansible, ansible: {provision: {extra-vars: {}}}}}",
            "mechanism.ansible.provision.playbook",
            "required: the playbook to run",
        ),
        (
            "{mechanism: {type: ansible, ansible: {provision: {playbook: [p]}}}}",
            "mechanism.ansible.provision.playbook",
            "expected a string, got a list",
        ),
        (
            "{mechanism: {type: ansible, ansible: {provision: {playbook: p, extra-vars: [x]}}}}",
            "mechanism.ansible.provision.extra-vars",
            "expected a mapping, got a list",
        ),
        (
            "{mechanism: {type: ansible, ansible: {provision: {playbook: p}, deprovision: {}}}}",
            "mechanism.ansible.deprovision.playbook",
            "required: the playbook to run",
        ),
        (
            "{mechanism: {type: ansible, ansible: {topdir: [x], provision: {playbook: p}}}}",
            "mechanism.ansible.topdir",
            "expected a string",
        ),
        (
            "{mechanism: {type: ansible, ansible: {extra-vars: x, provision: {playbook: p}}}}",
            "mechanism.ansible.extra-vars",
            "expected a mapping, got a string",
        ),
    ];
    for (def, key, expected) in cases {
        let e = err(&[("c.yaml", &format!("nodepools: {{concrete: {{vm: {def}}}}}"))]);
        assert_msg(
            &e,
            "c.yaml",
            &format!("nodepools.concrete.vm.{key}"),
            expected,
        );
    }
    // an abstract pool naming a wrong mechanism type is wrong too
    let e = err(&[(
        "c.yaml",
        "nodepools: {abstract: {a: {mechanism: {type: shell}}}}",
    )]);
    assert_msg(
        &e,
        "c.yaml",
        "nodepools.abstract.a.mechanism.type",
        "expected ansible, got \"shell\"",
    );
}

#[test]
fn fill_level_must_be_a_positive_integer() {
    for (value, shown) in [
        ("0", "0"),
        ("-1", "-1"),
        ("'x'", "\"x\""),
        ("2.5", "2.5"),
        ("false", "a boolean"),
        ("[1]", "a list"),
    ] {
        let e = err(&[(
            "f.yaml",
            &format!("nodepools: {{concrete: {{small: {{fill-level: {value}, {MECH}}}}}}}"),
        )]);
        assert_msg(
            &e,
            "f.yaml",
            "nodepools.concrete.small.fill-level",
            &format!("expected an integer > 0, got {shown}"),
        );
    }
    let c = ok(&format!(
        "nodepools: {{concrete: {{small: {{fill-level: 4294967295, {MECH}}}}}}}"
    ));
    assert_eq!(c.pool("small").unwrap().fill_level, Some(u32::MAX));
    // what upstream's Pydantic coerces: numeric strings, integral floats, true
    for (value, level) in [
        ("'3'", 3),
        ("' 3 '", 3),
        ("3.0", 3),
        ("'1_0'", 10),
        ("true", 1),
    ] {
        let c = ok(&format!(
            "nodepools: {{concrete: {{small: {{fill-level: {value}, {MECH}}}}}}}"
        ));
        assert_eq!(c.pool("small").unwrap().fill_level, Some(level), "{value}");
    }
    let e = err(&[(
        "f.yaml",
        &format!("nodepools: {{concrete: {{small: {{fill-level: 4294967296, {MECH}}}}}}}"),
    )]);
    assert_msg(
        &e,
        "f.yaml",
        "nodepools.concrete.small.fill-level",
        "expected an integer > 0",
    );
    // a bad inherited value is reported at the pool that set it
    let e = err(&[(
        "f.yaml",
        "nodepools: {abstract: {a: {fill-level: 0}}, concrete: {b: {extends: a}}}",
    )]);
    assert_msg(
        &e,
        "f.yaml",
        "nodepools.abstract.a.fill-level",
        "expected an integer > 0, got 0",
    );
}

#[test]
fn reuse_nodes_is_false_or_a_map_of_templates_and_integers() {
    let c = ok(&format!(
        "nodepools: {{concrete: {{a: {{reuse-nodes: false, {MECH}}}, b: {{reuse-nodes: ~, {MECH}}}, \
         c: {{reuse-nodes: {{arch: '{{{{ architecture }}}}', slots: 4}}, {MECH}}}}}}}"
    ));
    assert!(c.pool("a").unwrap().reuse_nodes.is_none());
    assert!(c.pool("b").unwrap().reuse_nodes.is_none());
    assert_eq!(c.pool("c").unwrap().reuse_nodes.as_ref().unwrap().len(), 2);
    let cases: &[(&str, &str, &str)] = &[
        (
            "true",
            "reuse-nodes",
            "expected false or a mapping of node data keys, got a boolean",
        ),
        ("[arch]", "reuse-nodes", "got a list"),
        ("yes", "reuse-nodes", "got a string"),
        (
            "{arch: 1.5}",
            "reuse-nodes.arch",
            "expected a string (template) or an integer, got a number",
        ),
        ("{arch: [x]}", "reuse-nodes.arch", "got a list"),
        ("{arch: ~}", "reuse-nodes.arch", "got null"),
    ];
    for (value, key, expected) in cases {
        let e = err(&[(
            "r.yaml",
            &format!("nodepools: {{concrete: {{p: {{reuse-nodes: {value}, {MECH}}}}}}}"),
        )]);
        assert_msg(
            &e,
            "r.yaml",
            &format!("nodepools.concrete.p.{key}"),
            expected,
        );
    }
}

#[test]
fn run_parallel_must_be_a_boolean() {
    let c = ok(&format!(
        "nodepools: {{concrete: {{p: {{run-parallel: false, {MECH}}}}}}}"
    ));
    assert!(!c.pool("p").unwrap().run_parallel);
    // upstream's Pydantic (and PyYAML's YAML 1.1 `yes`/`off`) take these
    for (value, want) in [
        ("'false'", false),
        ("0", false),
        ("no", false),
        ("off", false),
        ("yes", true),
        ("'On'", true),
        ("1", true),
    ] {
        let c = ok(&format!(
            "nodepools: {{concrete: {{p: {{run-parallel: {value}, {MECH}}}}}}}"
        ));
        assert_eq!(c.pool("p").unwrap().run_parallel, want, "{value}");
    }
    for value in ["'maybe'", "2", "[true]"] {
        let e = err(&[(
            "r.yaml",
            &format!("nodepools: {{concrete: {{p: {{run-parallel: {value}, {MECH}}}}}}}"),
        )]);
        assert_msg(
            &e,
            "r.yaml",
            "nodepools.concrete.p.run-parallel",
            "expected a boolean, got",
        );
    }
}

#[test]
fn contextualize_is_ssh_or_none() {
    let c = ok(&format!(
        "nodepools: {{concrete: {{a: {{contextualize: ssh, {MECH}}}, b: {{contextualize: none, {MECH}}}}}}}"
    ));
    assert_eq!(c.pool("a").unwrap().contextualize, Contextualize::Ssh);
    assert_eq!(c.pool("b").unwrap().contextualize, Contextualize::None);
    for (value, shown) in [
        ("bad", "\"bad\""),
        ("SSH", "\"SSH\""),
        ("false", "a boolean"),
        ("1", "1"),
    ] {
        let e = err(&[(
            "x.yaml",
            &format!("nodepools: {{concrete: {{p: {{contextualize: {value}, {MECH}}}}}}}"),
        )]);
        assert_msg(
            &e,
            "x.yaml",
            "nodepools.concrete.p.contextualize",
            &format!("expected ssh or none, got {shown}"),
        );
    }
}

#[test]
fn a_pool_definition_must_be_a_mapping() {
    let e = err(&[("x.yaml", "nodepools: {abstract: {a: [1]}}")]);
    assert_msg(
        &e,
        "x.yaml",
        "nodepools.abstract.a",
        "expected a mapping, got a list",
    );
}

// ---------------------------------------------------------------------------------------------
// masking

#[test]
fn masked_config_hides_every_secret() {
    let c = ok("
client: {url: 'https://duffy', auth: {name: tenant, key: 8e06b6e1-fb32-4348-9342-9509e7507a1e}}
database:
  sqlalchemy:
    sync_url: 'postgresql+psycopg://duffy:dbpass1@db:5432/duffy'
    async_url: 'postgresql+asyncpg://duffy:dbpass2@db:5432/duffy'
metaclient:
  usermap: {legacykey-0001: tenant1, legacykey-0002: tenant2}
tasks: {celery: {broker_url: 'redis://:redispass@localhost:6379'}}
ipmi: {credentials: {bmc: {user: admin, password: ipmipass}}}
nodepools:
  abstract:
    a:
      mechanism:
        type: ansible
        ansible:
          extra-vars: {api_username: apiuser, api_password: apipass, token: tok123, secret_thing: sec}
");
    let out = yaml(&c.raw.masked());
    for secret in [
        "8e06b6e1",
        "dbpass1",
        "dbpass2",
        "legacykey",
        "redispass",
        "ipmipass",
        "apipass",
        "tok123",
        ": sec",
    ] {
        assert!(!out.contains(secret), "{secret} visible in:\n{out}");
    }
    for visible in [
        "name: tenant",
        "postgresql+psycopg://duffy:**********@db:5432/duffy",
        "tenant1",
        "tenant2",
        "user: admin",
        "api_username: apiuser",
        "url: https://duffy",
    ] {
        assert!(out.contains(visible), "{visible} missing in:\n{out}");
    }
    // the config itself is untouched
    assert_eq!(
        get(&c, "client.auth.key"),
        &Value::from("8e06b6e1-fb32-4348-9342-9509e7507a1e")
    );
}

#[test]
fn mask_url_handles_every_password_form() {
    let cases = [
        ("postgresql://u:pw@h/db", "postgresql://u:**********@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h:5432/db", "postgresql://h:5432/db"),
        ("postgresql:///db", "postgresql:///db"),
        ("postgresql://u:p/w@h/db", "postgresql://u:**********@h/db"),
        ("postgresql://u:p@w@h/db", "postgresql://u:**********@h/db"),
        (
            "postgresql://u@h/db?sslmode=require&password=pw&x=1",
            "postgresql://u@h/db?sslmode=require&password=**********&x=1",
        ),
        (
            "host=db user=u password=pw dbname=d",
            "host=db user=u password=********** dbname=d",
        ),
        (
            "host=db password='p w \\' x' dbname=d",
            "host=db password=********** dbname=d",
        ),
        ("host=db PASSWORD=pw", "host=db PASSWORD=**********"),
        ("sslpassword=pw", "sslpassword=**********"),
        ("password=", "password="),
        (
            "redis://:pw@localhost:6379/0",
            "redis://:**********@localhost:6379/0",
        ),
        ("https://example.org/a@b", "https://example.org/a@b"),
        ("not a url", "not a url"),
    ];
    for (input, want) in cases {
        assert_eq!(secrets::mask_url(input), want, "{input}");
    }
}

#[test]
fn inventory_defaults_exclude_done_and_derive_arch_and_release() {
    use crate::state::NodeState;
    let c = ok("");
    let inv = &c.inventory;
    assert!(!inv.include_retired);
    assert_eq!(inv.group_prefix, "");
    assert!(inv.artifacts_group.is_none());
    assert_eq!(inv.connect_timeout, secs(10).unwrap());
    let states = inv.effective_states();
    assert_eq!(states.len(), 7);
    assert!(!states.contains(&NodeState::Done));
    let attrs = inv.effective_attributes();
    assert_eq!(attrs.keys().collect::<Vec<_>>(), ["arch", "release"]);
    let arch = &attrs["arch"];
    assert_eq!(arch.pool_key.as_deref(), Some("architecture"));
    assert_eq!(arch.data_key.as_deref(), Some("architecture"));
    let re = &arch.pool_regex.as_ref().unwrap().0;
    let caps = re.captures("metal-ec2-c5n-centos-10s-x86_64").unwrap();
    assert_eq!(&caps["value"], "x86_64");
    let re = &attrs["release"].pool_regex.as_ref().unwrap().0;
    let caps = re.captures("virt-one-medium-centos-9s-ppc64le").unwrap();
    assert_eq!(&caps["value"], "centos-9s");
    assert!(re.captures("physical-centos9stream-x86_64").is_none());
}

#[test]
fn inventory_section_is_typed() {
    use crate::state::NodeState;
    let c = ok("inventory:\n  states: [ready, failed]\n  include-retired: true\n  group-prefix: duffy_\n  \
                connect-timeout: 3s\n  artifacts-group: hostgroup-role-artifacts-srv\n  attributes:\n    \
                arch: {pools: {physical-centos9stream-x86_64: x86_64}, data-key: architecture}\n    \
                kind: {pool-regex: '^(virt|metal)-'}\n");
    let inv = &c.inventory;
    assert_eq!(
        inv.effective_states(),
        [NodeState::Ready, NodeState::Failed]
    );
    assert!(inv.include_retired);
    assert_eq!(inv.connect_timeout, secs(3).unwrap());
    assert_eq!(
        inv.artifacts_group.as_deref(),
        Some("hostgroup-role-artifacts-srv")
    );
    let attrs = inv.effective_attributes();
    assert_eq!(attrs.keys().collect::<Vec<_>>(), ["arch", "kind"]);
    assert_eq!(
        attrs["arch"].pools["physical-centos9stream-x86_64"],
        "x86_64"
    );
    assert!(attrs["arch"].pool_regex.is_none());
    // `attributes: {}` switches the defaults off
    assert!(ok("inventory: {attributes: {}}")
        .inventory
        .effective_attributes()
        .is_empty());
    // a later file merges into the inventory section like any other
    let c = cfg(&[
        ("a.yaml", "inventory: {group-prefix: a_, states: [ready]}"),
        ("b.yaml", "inventory: {group-prefix: b_}"),
    ])
    .unwrap();
    assert_eq!(c.inventory.group_prefix, "b_");
    assert_eq!(c.inventory.effective_states(), [NodeState::Ready]);
}

#[test]
fn inventory_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "inventory: {states: []}",
            "inventory.states",
            "expected at least one node state",
        ),
        (
            "inventory: {include-retired: maybe}",
            "inventory.include-retired",
            "expected a boolean",
        ),
        (
            "inventory: {group-prefix: 'duffy-'}",
            "inventory.group-prefix",
            "letters, digits and `_`",
        ),
        (
            "inventory: {group-prefix: '9x'}",
            "inventory.group-prefix",
            "not starting with a digit",
        ),
        (
            "inventory: {artifacts-group: 'a b'}",
            "inventory.artifacts-group",
            "no spaces",
        ),
        (
            "inventory: {artifacts-group: ''}",
            "inventory.artifacts-group",
            "expected an Ansible group name",
        ),
        (
            "inventory: {connect-timeout: soon}",
            "inventory.connect-timeout",
            "expected a duration",
        ),
        (
            "inventory: {attributes: [arch]}",
            "inventory.attributes",
            "invalid type: sequence, expected a map",
        ),
        (
            "inventory: {attributes: {arch: {regex: x}}}",
            "inventory.attributes.arch.regex",
            "unknown field `regex`",
        ),
        (
            "inventory: {attributes: {arch: {}}}",
            "inventory.attributes.arch",
            "expected at least one of pools, pool-key, data-key, pool-regex",
        ),
        (
            "inventory: {attributes: {arch: {pool-regex: '(x'}}}",
            "inventory.attributes.arch.pool-regex",
            "invalid regular expression \"(x\": unclosed group",
        ),
        (
            "inventory: {attributes: {arch: {pool-regex: 5}}}",
            "inventory.attributes.arch.pool-regex",
            "expected a regular expression string, got a number",
        ),
        (
            "inventory: {attributes: {arch: {pools: {p: [x]}}}}",
            "inventory.attributes.arch.pools.p",
            "invalid type: sequence, expected a string",
        ),
        (
            "inventory: {attributes: {os-release: {data-key: os}}}",
            "inventory.attributes.os-release",
            "expected an attribute name",
        ),
        (
            "inventory: {attributes: {pool: {data-key: p}}}",
            "inventory.attributes.pool",
            "reserved: the inventory already sets duffy_pool",
        ),
    ];
    for (text, key, expected) in cases {
        assert_msg(&err(&[("t.yaml", text)]), "t.yaml", key, expected);
    }
}

#[test]
fn app_server_limits_default_and_parse() {
    use std::time::Duration;
    let c = ok("app: {}");
    assert_eq!(c.app.header_read_timeout.0, Duration::from_secs(30));
    assert_eq!(c.app.idle_timeout.0, Duration::from_secs(15));
    assert_eq!(c.app.body_read_timeout.0, Duration::from_secs(60));
    assert_eq!(c.app.shutdown_timeout.0, Duration::from_secs(10));
    assert_eq!(c.app.max_connections, None);
    let c = ok(
        "app: {header-read-timeout: 5s, idle-timeout: 1m, body-read-timeout: 90, \
                shutdown-timeout: 2s, max-connections: 100}",
    );
    assert_eq!(c.app.header_read_timeout.0, Duration::from_secs(5));
    assert_eq!(c.app.idle_timeout.0, Duration::from_secs(60));
    assert_eq!(c.app.body_read_timeout.0, Duration::from_secs(90));
    assert_eq!(c.app.shutdown_timeout.0, Duration::from_secs(2));
    assert_eq!(c.app.max_connections, Some(100));
}

#[test]
fn legacy_import_rules() {
    let pools = format!(
        "nodepools:\n  concrete:\n    x86:\n      fill-level: 1\n      {MECH}\n    arm:\n      fill-level: 1\n      {MECH}\n"
    );
    let c = ok(&format!(
        "{pools}legacy-import:\n  pools:\n    - pool: arm\n      arch: aarch64\n      flavor: [tiny, '']\n    - pool: x86\n      ver: [7, 8-stream]\n      v2-pool: 1\n      reusable: false\n"
    ));
    let li = &c.legacy_import;
    let pool = |arch, ver, flavor, p| {
        li.rule_for(arch, None, ver, flavor, p)
            .map(|r| r.pool.as_str())
    };
    assert_eq!(
        pool(Some("aarch64"), None, None, None),
        Some("arm"),
        "'' matches NULL"
    );
    assert_eq!(pool(Some("aarch64"), None, Some("tiny"), None), Some("arm"));
    assert_eq!(
        pool(Some("aarch64"), Some("7"), Some("medium"), Some(1)),
        Some("x86"),
        "first match wins, in order"
    );
    assert_eq!(
        pool(Some("x86_64"), Some("8-stream"), None, Some(1)),
        Some("x86")
    );
    assert_eq!(pool(Some("x86_64"), Some("8-stream"), None, Some(0)), None);
    assert_eq!(
        pool(Some("x86_64"), None, None, Some(1)),
        None,
        "a criterion needs a value"
    );
    assert!(!li.pools[1].reusable && li.pools[0].reusable);
    assert!(ok("legacy-import: {}").legacy_import.pools.is_empty());

    let m = err(&[(
        "f.yaml",
        &format!("{pools}legacy-import:\n  pools:\n    - pool: nosuch\n"),
    )]);
    assert_msg(
        &m,
        "f.yaml",
        "legacy-import.pools[0].pool",
        "\"nosuch\" is not a concrete pool of nodepools (known: x86, arm)",
    );
    let m = err(&[(
        "f.yaml",
        &format!("{pools}legacy-import:\n  pools:\n    - pool: x86\n      arch: []\n"),
    )]);
    assert_msg(
        &m,
        "f.yaml",
        "legacy-import.pools[0].arch",
        "expected at least one value",
    );
    let m = err(&[(
        "f.yaml",
        &format!("{pools}legacy-import:\n  pools:\n    - pool: x86\n      ver: [{{a: 1}}]\n"),
    )]);
    assert_msg(
        &m,
        "f.yaml",
        "legacy-import.pools[0].ver",
        "expected a string or number",
    );
    let m = err(&[(
        "f.yaml",
        &format!("{pools}legacy-import:\n  pools:\n    - pool: x86\n      distro: centos\n"),
    )]);
    assert_msg(
        &m,
        "f.yaml",
        "legacy-import.pools[0].distro",
        "unknown field `distro`",
    );
}

#[test]
fn metrics_access_and_scheduler_listen_address() {
    let c = ok("{}");
    assert_eq!(c.app.metrics, MetricsAccess::Public);
    assert!(c.scheduler.metrics_addr().is_none());
    assert_eq!(
        ok("app: {metrics: admin}").app.metrics,
        MetricsAccess::Admin
    );
    assert_eq!(ok("app: {metrics: 'off'}").app.metrics, MetricsAccess::Off);
    let c = ok("scheduler: {metrics-listen: '127.0.0.1:9465'}");
    assert_eq!(
        c.scheduler.metrics_addr(),
        Some(Ok(("127.0.0.1".to_string(), 9465)))
    );
    let c = ok("scheduler: {metrics-listen: '[::1]:9465'}");
    assert_eq!(
        c.scheduler.metrics_addr(),
        Some(Ok(("::1".to_string(), 9465)))
    );
    assert_msg(
        &err(&[("f.yaml", "app: {metrics: everyone}")]),
        "f.yaml",
        "app.metrics",
        "expected one of `public`, `admin`, `off`",
    );
    for bad in ["9465", "host:", ":9465", "host:0", "host:70000", "host:x"] {
        assert_msg(
            &err(&[("f.yaml", &format!("scheduler: {{metrics-listen: '{bad}'}}"))]),
            "f.yaml",
            "scheduler.metrics-listen",
            "expected HOST:PORT (port 1-65535)",
        );
    }
}
