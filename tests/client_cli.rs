//! `duffy client` against a real `duffy serve` on a throw-away PostgreSQL database: every
//! command in every format, API errors as documents, argument errors, an unreachable server,
//! configuration defaults versus flags, and the API key never showing up in any output.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::{json, Value};

/// A server with pools and ready nodes, one tenant, and a client config file for it.
struct Env {
    db: TestDb,
    _cfg: TestConfig,
    server: Server,
    key: String,
    dir: tempfile::TempDir,
    client_cfg: PathBuf,
}

impl Env {
    /// `pools`: (name, fill-level, ready nodes)
    fn new(pools: &[(&str, u32, usize)]) -> Env {
        let db = TestDb::migrated();
        let names: Vec<(&str, u32)> = pools.iter().map(|(n, f, _)| (*n, *f)).collect();
        let cfg = TestConfig::new(&db.url, &pools_yaml(&names));
        for (i, (name, _, n)) in pools.iter().enumerate() {
            add_ready_nodes(&db, name, *n, 10 + i as u8);
        }
        let key = create_tenant(&cfg.path, "tnt", &[]);
        let server = Server::start(&cfg.path);
        let dir = tempfile::tempdir().unwrap();
        let client_cfg = dir.path().join("client.yaml");
        let env = Env {
            db,
            _cfg: cfg,
            server,
            key,
            dir,
            client_cfg,
        };
        env.write_client_cfg(&env.client_cfg, &env.url(), "tnt", &env.key);
        env
    }

    fn url(&self) -> String {
        format!("{}/api/v1", self.server.url())
    }

    fn write_client_cfg(&self, path: &Path, url: &str, name: &str, key: &str) {
        std::fs::write(
            path,
            format!("client:\n  url: {url}\n  auth:\n    name: {name}\n    key: {key}\n"),
        )
        .unwrap();
    }

    /// `duffy -c <client config> client ARGS…`
    fn client(&self, args: &[&str]) -> Output {
        let mut a = vec!["client"];
        a.extend_from_slice(args);
        duffy(Some(&self.client_cfg), &a)
    }

    /// `duffy client --url … --auth-name tnt --auth-key … ARGS…` (no config at all)
    fn client_flags(&self, args: &[&str]) -> Output {
        let url = self.url();
        let mut a = vec![
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            &self.key,
        ];
        a.extend_from_slice(args);
        duffy(None, &a)
    }

    fn node_states(&self) -> Vec<String> {
        self.db
            .query_strings("SELECT state::text FROM nodes ORDER BY id")
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }
}

fn json_of(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).expect("JSON output")
}

fn assert_usage_error(o: &Output, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    assert!(stdout(o).is_empty(), "stdout: {}", stdout(o));
    assert!(
        stderr(o).contains(needle),
        "{needle:?} not in: {}",
        stderr(o)
    );
}

/// The session document of a `request-session`/`show-session` JSON output.
fn session_of(o: &Output) -> Value {
    let v = json_of(o);
    v["session"].clone()
}

#[test]
fn pools_in_every_format() {
    let env = Env::new(&[("pool-a", 3, 3), ("pool-b", 1, 1)]);
    let o = env.client(&["list-pools"]);
    assert_eq!(
        ok(&o),
        "{\n    \"action\": \"get\",\n    \"pools\": [\n        {\n            \"name\": \"pool-a\",\n            \"fill-level\": 3\n        },\n        {\n            \"name\": \"pool-b\",\n            \"fill-level\": 1\n        }\n    ]\n}\n"
    );
    let o = env.client(&["--format", "yaml", "list-pools"]);
    assert_eq!(
        ok(&o),
        "action: get\npools:\n- fill-level: 3\n  name: pool-a\n- fill-level: 1\n  name: pool-b\n\n"
    );
    let o = env.client(&["--format", "flat", "list-pools"]);
    assert_eq!(
        ok(&o),
        "pool_name='pool-a' fill_level=3\npool_name='pool-b' fill_level=1\n"
    );
    // case-insensitive format names, like upstream's click.Choice
    let o = env.client(&["--format", "FLAT", "list-pools"]);
    assert_eq!(
        ok(&o),
        "pool_name='pool-a' fill_level=3\npool_name='pool-b' fill_level=1\n"
    );

    let o = env.client(&["show-pool", "pool-a"]);
    assert_eq!(
        json_of(&o),
        json!({"action": "get", "pool": {"name": "pool-a", "fill-level": 3, "levels": {
            "provisioning": 0, "ready": 3, "contextualizing": 0, "deployed": 0, "deprovisioning": 0}}})
    );
    let o = env.client(&["--format", "yaml", "show-pool", "pool-a"]);
    assert_eq!(
        ok(&o),
        "action: get\npool:\n  fill-level: 3\n  levels:\n    contextualizing: 0\n    deployed: 0\n    deprovisioning: 0\n    provisioning: 0\n    ready: 3\n  name: pool-a\n\n"
    );
    let o = env.client(&["--format", "flat", "show-pool", "pool-b"]);
    assert_eq!(
        ok(&o),
        "pool_name='pool-b' fill_level=1 levels_provisioning=0 levels_ready=1 levels_contextualizing=0 levels_deployed=0 levels_deprovisioning=0\n"
    );

    // pools need no credentials at all
    let url = env.url();
    let o = duffy(
        None,
        &["client", "--url", &url, "--format", "flat", "list-pools"],
    );
    assert_eq!(
        ok(&o),
        "pool_name='pool-a' fill_level=3\npool_name='pool-b' fill_level=1\n"
    );
    // `--format` and `--url` are accepted after the command too
    let o = duffy(
        None,
        &[
            "client",
            "show-pool",
            "pool-b",
            "--format",
            "flat",
            "--url",
            &url,
        ],
    );
    assert!(ok(&o).starts_with("pool_name='pool-b' fill_level=1 levels_"));
}

#[test]
fn session_lifecycle_in_every_format() {
    let env = Env::new(&[("pool-a", 3, 3), ("pool-b", 2, 2)]);

    // nothing yet: list-sessions prints an empty list (json/yaml) or nothing at all (flat)
    assert_eq!(
        ok(&env.client(&["list-sessions"])),
        "{\n    \"action\": \"get\",\n    \"sessions\": []\n}\n"
    );
    assert_eq!(
        ok(&env.client(&["--format", "yaml", "list-sessions"])),
        "action: get\nsessions: []\n\n"
    );
    assert_eq!(ok(&env.client(&["--format", "flat", "list-sessions"])), "");

    // request: two pools in one session
    let o = env.client(&[
        "request-session",
        "pool=pool-b,quantity=1",
        "pool=pool-a,quantity=2",
    ]);
    let v = json_of(&o);
    assert_eq!(v["action"], "post");
    let s = &v["session"];
    let id = s["id"].as_i64().unwrap();
    assert_eq!(s["active"], true);
    assert_eq!(s["tenant"]["name"], "tnt");
    assert_eq!(s["tenant"]["ssh_key"], "**********");
    assert_eq!(
        s["data"]["nodes_specs"],
        json!([{"quantity": 1, "pool": "pool-b"}, {"quantity": 2, "pool": "pool-a"}])
    );
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["state"] == "deployed"));
    let mut states = env.node_states();
    states.sort();
    assert_eq!(
        states,
        ["deployed", "deployed", "deployed", "ready", "ready"]
    );
    // the output is upstream's json.dumps(indent=4) plus a newline
    let text = stdout(&o);
    assert!(text.starts_with("{\n    \"action\": \"post\",\n    \"session\": {\n        \"retired_at\": null,\n        \"active\": true,\n"), "{text}");
    assert!(text.ends_with("\n    }\n}\n"), "{text}");

    let sid = id.to_string();
    // show-session: the same session (action "get")
    let shown = session_of(&env.client(&["show-session", &sid]));
    assert_eq!(&shown, s);
    assert_eq!(
        session_of(&env.client_flags(&["show-session", &sid])),
        shown
    );
    // yaml: the same document, keys sorted, timestamps quoted (they'd read back as dates)
    let o = env.client(&["--format", "yaml", "show-session", &sid]);
    let y = ok(&o);
    assert!(y.ends_with("\n\n"), "{y}");
    assert!(
        y.starts_with("action: get\nsession:\n  active: true\n  created_at: '"),
        "{y}"
    );
    let parsed: Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(parsed["session"], shown);

    // flat: one line per node sorted by (pool, hostname, ipaddr)
    let created = s["created_at"].as_str().unwrap();
    let mut expect: Vec<(String, String, String)> = nodes
        .iter()
        .map(|n| {
            (
                n["pool"].as_str().unwrap().to_string(),
                n["hostname"].as_str().unwrap().to_string(),
                n["ipaddr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    expect.sort();
    let lines: String = expect
        .iter()
        .map(|(p, h, i)| {
            format!("session_id={id} active=TRUE created_at='{created}' retired_at= pool='{p}' hostname='{h}' ipaddr='{i}'\n")
        })
        .collect();
    assert!(lines.starts_with(&format!(
        "session_id={id} active=TRUE created_at='{created}' retired_at= pool='pool-a'"
    )));
    assert_eq!(
        ok(&env.client(&["--format", "flat", "show-session", &sid])),
        lines
    );
    assert_eq!(
        ok(&env.client(&["--format", "flat", "list-sessions"])),
        lines
    );
    let listed = json_of(&env.client(&["list-sessions"]));
    assert_eq!(listed["sessions"], json!([shown]));

    // a second session requested in flat format prints its node lines
    let o = env.client(&[
        "--format",
        "flat",
        "request-session",
        "pool=pool-b,quantity=1",
    ]);
    let out = ok(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(" pool='pool-b' hostname='pool-b-"), "{out}");
    let sid2 = out
        .strip_prefix("session_id=")
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .to_string();
    assert_eq!(
        ok(&env.client(&["--format", "flat", "list-sessions"]))
            .lines()
            .count(),
        4
    );

    // update-session: extend from the current expiry, capped at the maximum lifetime (12h)
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let before = parse(s["expires_at"].as_str().unwrap());
    let o = env.client(&["update-session", &sid, "--expires-at", "+1h"]);
    let v = json_of(&o);
    assert_eq!(v["action"], "put");
    let after = parse(v["session"]["expires_at"].as_str().unwrap());
    assert_eq!(after - before, chrono::Duration::hours(1));
    let o = env.client(&[
        "--format",
        "flat",
        "update-session",
        &sid,
        "--expires-at",
        "+100h",
    ]);
    assert_eq!(ok(&o), lines);
    let capped = session_of(&env.client(&["show-session", &sid]));
    let max = parse(created) + chrono::Duration::hours(12);
    assert_eq!(parse(capped["expires_at"].as_str().unwrap()), max);

    // retire: nodes' state null in the answer, session inactive
    let o = env.client(&["retire-session", &sid]);
    let v = json_of(&o);
    assert_eq!(v["action"], "put");
    assert_eq!(v["session"]["active"], false);
    assert!(v["session"]["retired_at"].is_string());
    assert!(v["session"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["state"].is_null()));
    let retired_at = v["session"]["retired_at"].as_str().unwrap().to_string();
    let o = env.client(&["--format", "flat", "show-session", &sid]);
    let out = ok(&o);
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().all(|l| l.starts_with(&format!(
        "session_id={id} active=FALSE created_at='{created}' retired_at='{retired_at}' pool="
    ))));
    // retired sessions are not listed
    assert_eq!(
        ok(&env.client(&["--format", "flat", "list-sessions"]))
            .lines()
            .count(),
        1
    );
    let o = env.client(&["--format", "yaml", "retire-session", &sid2]);
    let y = ok(&o);
    assert!(
        y.starts_with("action: put\nsession:\n  active: false\n"),
        "{y}"
    );
    assert_eq!(ok(&env.client(&["--format", "flat", "list-sessions"])), "");
    assert_eq!(
        ok(&env.client(&["list-sessions"])),
        "{\n    \"action\": \"get\",\n    \"sessions\": []\n}\n"
    );
}

#[test]
fn api_errors_are_documents() {
    let env = Env::new(&[("pool-a", 2, 2)]);
    let bad = "00000000-0000-4000-8000-000000000000";
    let url = env.url();
    let with_bad_key = |args: &[&str]| {
        let mut a = vec![
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            bad,
        ];
        a.extend_from_slice(args);
        duffy(None, &a)
    };

    // 401: upstream's document, exit 0 (scripts test the JSON)
    let o = with_bad_key(&["list-sessions"]);
    assert_eq!(
        ok(&o),
        "{\n    \"error\": {\n        \"detail\": \"Unauthorized\"\n    }\n}\n"
    );
    let o = with_bad_key(&[
        "--format",
        "yaml",
        "request-session",
        "pool=pool-a,quantity=1",
    ]);
    assert_eq!(ok(&o), "error:\n  detail: Unauthorized\n\n");
    // flat: `error='…'` (upstream crashes here), exit 1, the detail on stderr
    let o = with_bad_key(&["--format", "flat", "list-sessions"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "error='Unauthorized'\n");
    assert_eq!(stderr(&o), "ERROR: Unauthorized\n");

    // unknown pool: 422 with a string detail, nothing allocated
    let o = env.client(&["request-session", "pool=nope,quantity=1"]);
    assert_eq!(
        ok(&o),
        "{\n    \"error\": {\n        \"detail\": \"can't reserve nodes: quantity=1 pool='nope'\"\n    }\n}\n"
    );
    let o = env.client(&[
        "--format",
        "yaml",
        "request-session",
        "pool=nope,quantity=1",
    ]);
    assert_eq!(
        ok(&o),
        "error:\n  detail: 'can''t reserve nodes: quantity=1 pool=''nope'''\n\n"
    );
    let o = env.client(&[
        "--format",
        "flat",
        "request-session",
        "pool=pool-a,quantity=1",
        "pool=nope,quantity=1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "error='can'\"'\"'t reserve nodes: quantity=1 pool='\"'\"'nope'\"'\"''\n"
    );
    assert_eq!(env.node_states(), ["ready", "ready"]);
    // more nodes than there are
    let o = env.client(&["request-session", "pool=pool-a,quantity=3"]);
    assert_eq!(
        json_of(&o),
        json!({"error": {"detail": "can't reserve nodes: quantity=3 pool='pool-a'"}})
    );
    assert_eq!(env.node_states(), ["ready", "ready"]);

    // 404s
    let o = env.client(&["show-pool", "nope"]);
    assert_eq!(json_of(&o), json!({"error": {"detail": "Not Found"}}));
    let o = env.client(&["show-session", "999"]);
    assert_eq!(json_of(&o), json!({"error": {"detail": "Not Found"}}));
    let o = env.client(&["--format", "flat", "retire-session", "999"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "error='Not Found'\n");

    // retiring twice
    let s = session_of(&env.client(&["request-session", "pool=pool-a,quantity=1"]));
    let sid = s["id"].to_string();
    json_of(&env.client(&["retire-session", &sid]));
    let o = env.client(&["retire-session", &sid]);
    assert_eq!(
        json_of(&o),
        json!({"error": {"detail": format!("session {sid} is retired")}})
    );
    let o = env.client(&["update-session", &sid, "--expires-at", "+1h"]);
    assert_eq!(
        json_of(&o),
        json!({"error": {"detail": format!("session {sid} is retired")}})
    );

    // another tenant's session: 403
    let other_key = create_tenant(&env._cfg.path, "other", &[]);
    let o = duffy(
        None,
        &[
            "client",
            "--url",
            &url,
            "--auth-name",
            "other",
            "--auth-key",
            &other_key,
            "show-session",
            &sid,
        ],
    );
    assert_eq!(json_of(&o), json!({"error": {"detail": "Forbidden"}}));

    // a 422 whose detail is a list is no document (upstream raises): one line, exit 1
    let o = env.client(&["update-session", &sid, "--expires-at", "next tuesday"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).is_empty());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("HTTP 422") && err.contains("expires_at"),
        "{err}"
    );
}

#[test]
fn argument_errors_exit_2() {
    let url = "http://127.0.0.1:9/api/v1"; // never contacted
    let k = "00000000-0000-4000-8000-000000000000";
    let run = |args: &[&str]| {
        let mut a = vec!["client", "--url", url, "--auth-name", "t", "--auth-key", k];
        a.extend_from_slice(args);
        duffy(None, &a)
    };
    for (args, needle) in [
        (
            &["request-session", "pool=a"][..],
            "Both `pool` and `quantity` must be set",
        ),
        (
            &["request-session", "quantity=1"][..],
            "Both `pool` and `quantity` must be set",
        ),
        (
            &["request-session", "pool=a,quantity=1,flavor=x"][..],
            "Both `pool` and `quantity` must be set",
        ),
        (
            &["request-session", "pool=a,pool=b"][..],
            "Duplicate key: pool",
        ),
        (
            &[
                "request-session",
                "pool=a,quantity=1",
                "pool=b,quantity=1,quantity=2",
            ][..],
            "Duplicate key: quantity",
        ),
        (&["request-session", "pool=a,quantity=0"][..], "quantity"),
        (&["request-session", "pool=a,quantity=two"][..], "quantity"),
        (&["request-session", "pool"][..], "key=value"),
        (&["request-session"][..], "required"),
        (&["show-session", "abc"][..], "invalid value 'abc'"),
        (&["retire-session"][..], "required"),
        (&["update-session", "1"][..], "--expires-at"),
        (
            &["update-session", "1", "--expires-at", "+2x"][..],
            "invalid duration",
        ),
        (
            &["--format", "xml", "list-pools"][..],
            "invalid value 'xml'",
        ),
        (&["no-such-command"][..], "unrecognized subcommand"),
    ] {
        let o = run(args);
        assert_usage_error(&o, needle);
    }
    // no URL anywhere
    let o = duffy(None, &["client", "list-pools"]);
    assert_usage_error(&o, "client.url");
    // sessions need credentials
    for cmd in [
        &["list-sessions"][..],
        &["show-session", "1"],
        &["retire-session", "1"],
    ] {
        let mut a = vec!["client", "--url", url];
        a.extend_from_slice(cmd);
        assert_usage_error(&duffy(None, &a), "client.auth");
    }
    let o = duffy(
        None,
        &["client", "--url", url, "--auth-name", "t", "list-sessions"],
    );
    assert_usage_error(&o, "no API key");
    // not an http(s) URL
    let o = duffy(None, &["client", "--url", "ftp://h/api/v1", "list-pools"]);
    assert_usage_error(&o, "http:// or https://");
}

#[test]
fn unreachable_server_is_one_line() {
    let port = free_port(); // bound then released: nothing listens
    let key = "11111111-2222-4333-8444-555555555555";
    for scheme in ["http", "https"] {
        let url = format!("{scheme}://127.0.0.1:{port}/api/v1");
        for fmt in ["json", "flat"] {
            let o = duffy(
                None,
                &[
                    "client",
                    "--url",
                    &url,
                    "--auth-name",
                    "t",
                    "--auth-key",
                    key,
                    "--format",
                    fmt,
                    "list-sessions",
                ],
            );
            assert_eq!(o.status.code(), Some(1));
            assert!(stdout(&o).is_empty());
            let err = stderr(&o);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!(
                    "ERROR: can't reach the Duffy API at {scheme}://127.0.0.1:{port}/api/v1/sessions: "
                )),
                "{err}"
            );
            assert!(err.contains("refused"), "{err}");
            assert!(!err.contains(key));
        }
    }

    // https to something that doesn't speak TLS: one line too
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let url = format!("https://127.0.0.1:{port}/api/v1");
    let o = duffy(None, &["client", "--url", &url, "list-pools"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ERROR: can't reach the Duffy API at https://"),
        "{err}"
    );
    t.join().unwrap();

    // a server answering garbage: one line
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot json!",
            );
        }
    });
    let url = format!("http://127.0.0.1:{port}/api/v1");
    let o = duffy(None, &["client", "--url", &url, "list-pools"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not JSON"), "{err}");
    t.join().unwrap();
}

#[test]
fn config_defaults_and_flags() {
    let env = Env::new(&[("pool-a", 1, 1)]);
    let url = env.url();

    // the seed SOP: ~/.config/duffy is a single YAML file with the `client` section
    let home = env.dir.path().join("home");
    std::fs::create_dir_all(home.join(".config")).unwrap();
    env.write_client_cfg(&home.join(".config/duffy"), &url, "tnt", &env.key);
    let in_home = |args: &[&str]| {
        let mut a = vec!["client"];
        a.extend_from_slice(args);
        let mut c = duffy_cmd(None, &a);
        c.env("HOME", &home).env_remove("XDG_CONFIG_HOME");
        c.output().unwrap()
    };
    let o = in_home(&["list-sessions"]);
    assert_eq!(json_of(&o), json!({"action": "get", "sessions": []}));
    let o = in_home(&[
        "--format",
        "flat",
        "request-session",
        "pool=pool-a,quantity=1",
    ]);
    assert!(ok(&o).contains("pool='pool-a' hostname='pool-a-0.example.net'"));

    // $XDG_CONFIG_HOME/duffy as a directory of *.yaml files
    let xdg = env.dir.path().join("xdg");
    std::fs::create_dir_all(xdg.join("duffy")).unwrap();
    env.write_client_cfg(&xdg.join("duffy/10-client.yaml"), &url, "tnt", &env.key);
    let mut c = duffy_cmd(None, &["client", "--format", "flat", "list-sessions"]);
    c.env("XDG_CONFIG_HOME", &xdg);
    assert_eq!(ok(&c.output().unwrap()).lines().count(), 1);

    // $DUFFY_CONFIG
    let mut c = duffy_cmd(None, &["client", "--format", "flat", "list-sessions"]);
    c.env("DUFFY_CONFIG", &env.client_cfg);
    assert_eq!(ok(&c.output().unwrap()).lines().count(), 1);

    // flags win over the config: a config with a wrong URL and key
    let wrong = env.dir.path().join("wrong.yaml");
    env.write_client_cfg(
        &wrong,
        "http://127.0.0.1:9/api/v1",
        "tnt",
        "00000000-0000-4000-8000-000000000000",
    );
    let o = duffy(
        Some(&wrong),
        &["client", "--format", "flat", "list-sessions"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("127.0.0.1:9"));
    let o = duffy(
        Some(&wrong),
        &["client", "--url", &url, "--format", "flat", "list-sessions"],
    );
    assert_eq!(stdout(&o), "error='Unauthorized'\n");
    let o = duffy(
        Some(&wrong),
        &[
            "client",
            "--url",
            &url,
            "--auth-key",
            &env.key,
            "--format",
            "flat",
            "list-sessions",
        ],
    );
    assert_eq!(ok(&o).lines().count(), 1);
    // an empty flag means "not given" (upstream: `if url:`)
    let o = env.client(&[
        "--url",
        "",
        "--auth-key",
        "",
        "--format",
        "flat",
        "list-sessions",
    ]);
    assert_eq!(ok(&o).lines().count(), 1);
    // the name from the flag, the key from the config: wrong pair → 401
    let o = env.client(&["--auth-name", "someone", "list-sessions"]);
    assert_eq!(json_of(&o), json!({"error": {"detail": "Unauthorized"}}));

    // `--auth-key -` reads the key from stdin
    let mut c = duffy_cmd(
        None,
        &[
            "client",
            "--url",
            &url,
            "--auth-name",
            "tnt",
            "--auth-key",
            "-",
            "--format",
            "flat",
            "list-sessions",
        ],
    );
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", env.key).as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(ok(&o).lines().count(), 1);

    // the configured key must be a UUID (like upstream's config validation): exit 2
    let bad = env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("client:\n  url: {url}\n  auth:\n    name: tnt\n    key: not-a-uuid\n"),
    )
    .unwrap();
    let o = duffy(Some(&bad), &["client", "list-pools"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("client.auth.key"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("not-a-uuid"), "{}", stderr(&o));

    // the whole server config works as client config too (sections are independent)
    let full = env.dir.path().join("full.yaml");
    std::fs::write(
        &full,
        format!(
            "{}client:\n  url: {url}\n  auth:\n    name: tnt\n    key: {}\n",
            std::fs::read_to_string(&env._cfg.path).unwrap(),
            env.key
        ),
    )
    .unwrap();
    let o = duffy(
        Some(&full),
        &["client", "--format", "flat", "list-sessions"],
    );
    assert_eq!(ok(&o).lines().count(), 1);
}

#[test]
fn api_key_is_never_printed() {
    let env = Env::new(&[("pool-a", 2, 2)]);
    let url = env.url();
    let dead = format!("http://127.0.0.1:{}/api/v1", free_port());
    let wrong_key = "99999999-8888-4777-8666-555555555555";
    let run = |url: &str, key: &str, args: &[&str]| -> Output {
        let mut a = vec![
            "-l",
            "debug",
            "client",
            "--url",
            url,
            "--auth-name",
            "tnt",
            "--auth-key",
            key,
        ];
        a.extend_from_slice(args);
        let mut c: Command = duffy_cmd(None, &a);
        c.env("DUFFY_LOG", "trace");
        c.output().unwrap()
    };
    let mut outputs = vec![];
    for fmt in ["json", "yaml", "flat"] {
        outputs.push(run(
            &url,
            &env.key,
            &["--format", fmt, "request-session", "pool=pool-a,quantity=1"],
        ));
        outputs.push(run(&url, &env.key, &["--format", fmt, "list-sessions"]));
        outputs.push(run(
            &url,
            &env.key,
            &["--format", fmt, "request-session", "pool=x,quantity=1"],
        ));
        outputs.push(run(
            &url,
            &env.key,
            &[
                "--format",
                fmt,
                "update-session",
                "1",
                "--expires-at",
                "soon",
            ],
        ));
        outputs.push(run(&url, wrong_key, &["--format", fmt, "list-sessions"]));
        outputs.push(run(&dead, &env.key, &["--format", fmt, "list-sessions"]));
        outputs.push(run(
            &dead,
            wrong_key,
            &["--format", fmt, "show-session", "1"],
        ));
    }
    // user info in the URL is not shown either
    let with_userinfo = url.replace("http://", &format!("http://tnt:{}@", env.key));
    outputs.push(run(&with_userinfo, &env.key, &["list-pools"]));
    let bad_scheme = format!("ftp://tnt:{}@127.0.0.1/api/v1", env.key);
    outputs.push(run(&bad_scheme, &env.key, &["list-pools"]));
    let mut saw_debug = false;
    for o in &outputs {
        for text in [stdout(o), stderr(o)] {
            assert!(!text.contains(&env.key), "API key printed: {text}");
            assert!(!text.contains(wrong_key), "API key printed: {text}");
            // nor its base64 form (the Authorization header)
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("tnt:{}", env.key));
            assert!(!text.contains(&b64), "Authorization printed: {text}");
        }
        saw_debug |= stderr(o).contains("request");
    }
    assert!(saw_debug, "debug logging was on");
    // `--help` documents where the key comes from and that it is never printed
    let o = duffy(None, &["client", "--help"]);
    let help = ok(&o);
    assert!(
        help.contains("~/.config/duffy") && help.contains("never printed"),
        "{help}"
    );
}

/// `https://` URLs: rustls with the system's CA certificates (`SSL_CERT_FILE` honoured), served
/// here by `openssl s_server -WWW` with a certificate of a throw-away CA.
#[test]
fn https_with_the_system_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl (Debian package openssl) is needed for this test");
        assert!(o.status.success(), "openssl {args:?}: {}", stderr(&o));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=duffy test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    // -WWW serves files relative to the working directory
    std::fs::create_dir_all(d.join("api/v1")).unwrap();
    std::fs::write(
        d.join("api/v1/pools"),
        r#"{"action": "get", "pools": [{"name": "tls-pool", "fill-level": 1}]}"#,
    )
    .unwrap();
    let port = free_port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-cert", "leaf.pem", "-key", "leaf.key", "-WWW", "-quiet"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "openssl s_server");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("https://localhost:{port}/api/v1");
    let client = |trust: bool| {
        let mut c = duffy_cmd(
            None,
            &["client", "--url", &url, "--format", "flat", "list-pools"],
        );
        c.env_remove("SSL_CERT_DIR");
        if trust {
            c.env("SSL_CERT_FILE", d.join("ca.pem"));
        } else {
            c.env_remove("SSL_CERT_FILE");
        }
        c.output().unwrap()
    };
    let trusted = client(true);
    let untrusted = client(false);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(ok(&trusted), "pool_name='tls-pool' fill_level=1\n");
    assert_eq!(untrusted.status.code(), Some(1));
    let err = stderr(&untrusted);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("certificate"), "{err}");
}
