//! Shared integration-test harness: a throw-away PostgreSQL database per test, dropped on drop.
//!
//! The server is the machine's PostgreSQL (`DUFFY_TEST_PG`, default
//! `postgresql://postgres@127.0.0.1:5432/postgres`); every test gets a database of its own, so
//! tests run in parallel without sharing state.
#![allow(dead_code)]

pub mod ipmi_sim;
pub mod tcp_proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use duffy::db::{self, Db};

/// The admin URL of the test PostgreSQL server.
pub fn server_url() -> String {
    std::env::var("DUFFY_TEST_PG")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".into())
}

/// The test PostgreSQL server's TCP address (for a [`tcp_proxy::TcpProxy`]).
pub fn server_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let cfg = db::url::parse(&server_url()).expect("DUFFY_TEST_PG");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("DUFFY_TEST_PG: a TCP host is needed, got {other:?}"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolve the test PostgreSQL host")
        .next()
        .expect("an address of the test PostgreSQL host")
}

/// A throw-away database.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

fn admin_exec(sql: String) {
    let url = server_url();
    std::thread::spawn(move || {
        db::block_on(async move {
            let cfg = db::url::parse(&url).expect("DUFFY_TEST_PG");
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect to test PostgreSQL");
            let h = tokio::spawn(conn);
            client.batch_execute(&sql).await.expect(&sql);
            drop(client);
            let _ = h.await;
        })
    })
    .join()
    .expect("admin sql thread");
}

impl TestDb {
    /// Create an empty database (no schema).
    pub fn empty() -> TestDb {
        let name = format!("duffy_test_{}", uuid::Uuid::new_v4().simple());
        admin_exec(format!("CREATE DATABASE {name}"));
        let base = server_url();
        let url = match base.rfind('/') {
            Some(i)
                if base[..i].contains("://") && base[..i].len() > base.find("://").unwrap() + 2 =>
            {
                format!("{}/{name}", &base[..i])
            }
            _ => format!("{base}/{name}"),
        };
        TestDb { name, url }
    }

    /// Create a database with duffy's schema applied.
    pub fn migrated() -> TestDb {
        let t = TestDb::empty();
        let url = t.url.clone();
        // own thread: callers may be inside a tokio runtime already
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let mut c = d.get().await.unwrap();
                db::migrate::run(&mut c).await.unwrap();
            })
        })
        .join()
        .unwrap();
        t
    }

    /// This database's URL with its server reached at 127.0.0.1:`port` instead (a
    /// [`tcp_proxy::TcpProxy`] in front of the test server).
    pub fn url_via(&self, port: u16) -> String {
        let cfg = db::url::parse(&self.url).expect("test database URL");
        let password = cfg
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        format!(
            "postgresql://{}{password}@127.0.0.1:{port}/{}",
            cfg.get_user().unwrap_or("postgres"),
            self.name
        )
    }

    /// A pool on this database (call inside a runtime).
    pub async fn db(&self, size: usize) -> Db {
        Db::connect(&self.url, size).await.expect("connect test db")
    }

    /// Run SQL and return the first column of every row as text.
    pub fn query_strings(&self, sql: &str) -> Vec<Option<String>> {
        let url = self.url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let c = d.get().await.unwrap();
                let rows = c.simple_query(&sql).await.expect(&sql);
                rows.into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some(r.get(0).map(str::to_string))
                        }
                        _ => None,
                    })
                    .collect()
            })
        })
        .join()
        .unwrap()
    }

    /// The first column of every row as text, SQL NULL as `"NULL"`.
    pub fn rows(&self, sql: &str) -> Vec<String> {
        self.query_strings(sql)
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    /// The first column of the only row (panics unless there is exactly one).
    pub fn one(&self, sql: &str) -> String {
        let v = self.rows(sql);
        assert_eq!(v.len(), 1, "{sql}: {v:?}");
        v[0].clone()
    }

    /// Poll `sql` every 100 ms until its rows, joined with `,`, are `want`; panics after
    /// `timeout` with what it got.
    pub fn wait_for(&self, sql: &str, want: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        loop {
            let got = self.rows(sql).join(",");
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "waited {timeout:?} for `{sql}` = {want:?}, got {got:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Run SQL statements (no result).
    pub fn exec(&self, sql: &str) {
        let url = self.url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            db::block_on(async move {
                let d = Db::connect(&url, 1).await.unwrap();
                let c = d.get().await.unwrap();
                c.batch_execute(&sql).await.expect(&sql);
            })
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_exec(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A temporary directory with a duffy config pointing at `url`.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub const DEFAULTS_YAML: &str =
    "defaults:\n  session-lifetime: 6h\n  session-lifetime-max: 12h\n  node-quota: 10\n";

impl TestConfig {
    pub fn new(url: &str, extra: &str) -> TestConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duffy.yaml");
        std::fs::write(
            &path,
            format!("database:\n  sqlalchemy:\n    sync_url: {url}\n{DEFAULTS_YAML}{extra}"),
        )
        .unwrap();
        TestConfig { dir, path }
    }
}

/// Run the `duffy` binary with a clean environment (no user config, no DUFFY_* leaking in).
pub fn duffy(config: Option<&Path>, args: &[&str]) -> Output {
    duffy_cmd(config, args).output().expect("run duffy")
}

pub fn duffy_cmd(config: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duffy"));
    let home = std::env::temp_dir().join("duffy-test-empty-home");
    cmd.env_remove("DUFFY_CONFIG")
        .env_remove("DUFFY_DATABASE_URL")
        .env_remove("DUFFY_LOG")
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    }
    cmd.args(args);
    cmd
}

/// Run `cmd` (stdin closed, output captured) and return its output; a command still running
/// after `limit` (e.g. a server that should have refused to start) is killed and the test fails.
pub fn output_within(mut cmd: Command, limit: std::time::Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start the command");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {limit:?}\nstdout: {}\nstderr: {}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stdout of a command that must have succeeded (else panic with its exit, stdout, stderr).
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The credentials of an HTTP `Authorization: Basic …` header: base64 of `name:key`.
pub fn basic_credentials(name: &str, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{name}:{key}"))
}

/// A real ed25519 public key for tests.
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiBq493m1tooYiALmd9PJpwszntYIJ62bvnYyaDsrQA demo@ci";

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `duffy serve` process (killed on drop); its stderr (the log) goes to a temporary
/// file, read with [`Server::log`].
pub struct Server {
    pub port: u16,
    pub child: std::process::Child,
    log: tempfile::NamedTempFile,
}

impl Server {
    /// Start `duffy -c config serve -p <free port>` and wait until it accepts connections.
    pub fn start(config: &Path) -> Server {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let p = port.to_string();
        let mut args = vec!["serve", "-p", p.as_str()];
        args.extend_from_slice(extra);
        let log = tempfile::NamedTempFile::new().expect("server log file");
        let child = duffy_cmd(Some(config), &args)
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().expect("server log file"))
            .spawn()
            .expect("start duffy serve");
        let mut s = Server { port, child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("duffy serve exited early: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "duffy serve did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server logged so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Create a tenant with the real CLI and return its API key.
pub fn create_tenant(config: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["admin", "create-tenant"];
    args.extend_from_slice(extra);
    args.push(name);
    args.push(SSH_KEY);
    let o = duffy(Some(config), &args);
    assert!(o.status.success(), "create-tenant {name}: {}", stderr(&o));
    stdout(&o)
        .trim()
        .strip_prefix(&format!("OK: {name}: "))
        .expect("OK: NAME: KEY")
        .to_string()
}

/// Pool config for tests: concrete pools without SSH contextualization (address-only nodes).
pub fn pools_yaml(pools: &[(&str, u32)]) -> String {
    let mut s = String::from("nodepools:\n  concrete:\n");
    for (name, fill) in pools {
        s.push_str(&format!(
            "    {name}:\n      fill-level: {fill}\n      contextualize: none\n      mechanism: {{type: ansible, ansible: {{provision: {{playbook: provision.yml}}}}}}\n"
        ));
    }
    s
}

/// Insert `n` ready nodes into `pool` with distinct loopback addresses (127.<a>.<b>.<c>).
pub fn add_ready_nodes(db: &TestDb, pool: &str, n: usize, net: u8) {
    if n == 0 {
        return;
    }
    let values: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "('{pool}-{i}.example.net', '127.{net}.{}.{}', 'ready', '{pool}', false)",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    db.exec(&format!(
        "INSERT INTO nodes (hostname, ipaddr, state, pool, reusable) VALUES {}",
        values.join(", ")
    ));
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `bin/` folder of a project venv made by `.ci/<script>` (idempotent; run when missing, so
/// a test can never skip silently). `env_var` overrides the venv path, default `<repo>/<dir>`.
pub fn venv_bin(script: &str, env_var: &str, dir: &str) -> PathBuf {
    let venv = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(dir));
    let o = Command::new("bash")
        .arg(repo().join(".ci").join(script))
        .env(env_var, &venv)
        .output()
        .unwrap_or_else(|e| panic!("run .ci/{script}: {e}"));
    assert!(
        o.status.success(),
        ".ci/{script} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    venv.join("bin")
}

/// The `ansible.cfg` of the tests that run ansible-core: the JSON stdout callback
/// (`tests/ansible/callback_plugins`) whose output the tests parse, no fact gathering, no retry
/// files or noise, Python modules on the venv's interpreter; `extra` is appended (more
/// `[defaults]` keys first, then other sections).
pub fn ansible_cfg(extra: &str) -> String {
    format!(
        "[defaults]\ncallback_plugins = {}\nstdout_callback = json\ngathering = explicit\n\
         retry_files_enabled = False\ndeprecation_warnings = False\nlocalhost_warning = False\n\
         interpreter_python = {}\nnocolor = True\n{extra}",
        repo().join("tests/ansible/callback_plugins").display(),
        ansible_bin().join("python3").display()
    )
}

/// ansible-core's `bin/` (venv from `.ci/ansible-venv.sh`), made once per test process.
pub fn ansible_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| venv_bin("ansible-venv.sh", "DUFFY_ANSIBLE_VENV", ".venv-ansible"))
}

/// Run the calling test in a fresh machine's view of `/run` (`.ci/fresh-run.sh`: an empty tmpfs
/// but for the services' socket directories), whatever the machine has there from earlier work.
///
/// Called first in a test that runs roles or daemons on the host. Outside the view it runs this
/// test binary again, only `test` (its exact name), under `.ci/fresh-run.sh`, waits for it and
/// panics if it failed (or did not run that test); it then returns `false` and the caller
/// returns. Inside (the re-run) it checks that `/run` really is the fresh tmpfs and returns
/// `true`: the caller runs its body there, so a role or script that needs a `/run` path it does
/// not create (`/run/sshd`, `/run/netns`, …) fails the test on every machine, not only on a new
/// one. Every process the test starts shares the view; nothing it creates in `/run` is visible
/// outside or outlives it.
pub fn fresh_run_view(test: &str) -> bool {
    fresh_run_view_with(test, &[])
}

/// [`fresh_run_view`] with throw-away overlays on `overlays` (`.ci/fresh-run.sh --overlay`):
/// the test sees those directories as they are, and what it writes there is gone afterwards.
/// Install packages before calling it, never inside: dpkg's own records under an overlaid
/// `/var/lib` or `/etc` would be thrown away with it.
pub fn fresh_run_view_with(test: &str, overlays: &[&str]) -> bool {
    const TEST: &str = "DUFFY_FRESH_RUN_TEST";
    const STARTED: &str = "DUFFY_FRESH_RUN_STARTED";
    if std::env::var(TEST).as_deref() == Ok(test) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        assert!(
            mounts
                .lines()
                .any(|l| l.starts_with("duffy-fresh-run /run tmpfs ")),
            "{test}: /run is not .ci/fresh-run.sh's tmpfs"
        );
        for p in ["/run/sshd", "/run/netns"] {
            assert!(
                !Path::new(p).exists(),
                "{p} exists in the fresh /run of {test}"
            );
        }
        let marker = std::env::var(STARTED).expect(STARTED);
        std::fs::write(marker, test).expect("write the fresh-run marker");
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let marker = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::remove_file(&marker).unwrap();
    eprintln!("{test}: running in a fresh machine's view of /run (.ci/fresh-run.sh)");
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join(".ci/fresh-run.sh"));
    for d in overlays {
        cmd.args(["--overlay", d]);
    }
    let status = cmd
        .arg("--")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(TEST, test)
        .env(STARTED, &*marker)
        .status()
        .unwrap_or_else(|e| panic!("cannot run .ci/fresh-run.sh {}: {e}", exe.display()));
    assert!(
        status.success(),
        "{test} failed in a fresh machine's view of /run: {status} (its output is above)"
    );
    assert!(
        marker.exists(),
        "{test} did not run in the fresh view (no test of that exact name?)"
    );
    false
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.1, `Connection: close`, no body): status and body.
/// Content-Length bodies only (what both APIs send for small answers).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// `promtool` (`.ci/promtool.sh`: from PATH, else extracted once from Debian's `prometheus`
/// package into `$DUFFY_PROMTOOL_DIR`, default `<repo>/.venv-promtool`), found once per test
/// process.
pub fn promtool() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let o = Command::new("bash")
            .arg(repo().join(".ci/promtool.sh"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run .ci/promtool.sh");
        assert!(
            o.status.success(),
            ".ci/promtool.sh failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
        PathBuf::from(stdout(&o).trim())
    })
}
