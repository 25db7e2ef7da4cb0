//! `duffy client …`: the tenants' command line client of the REST API v1, a drop-in for
//! upstream's `duffy client` (same commands, request bodies, output bytes), plus
//! `update-session --expires-at` to extend a session. The HTTP and formatting code is the
//! library's `crate::client`.

use std::io::{BufRead, Write};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::{CliError, CliResult};
use crate::client::{self, Client, ClientError, NodesSpec};
use crate::config::Config;
use crate::db;
use crate::output;

const AFTER_HELP: &str = "\
Configuration: the `client` section of duffy's configuration (`-c FILE|DIR`, else \
$DUFFY_CONFIG, else /etc/duffy and ~/.config/duffy, which may be a single YAML file):

  client:
    url: https://duffy.ci.centos.org/api/v1
    auth:
      name: <tenant name>
      key: <API key>

--url, --auth-name and --auth-key override it. `--auth-key -` reads the key from the first \
line of standard input, so that it does not show in the process list. The API key is only \
sent in the Authorization header: it is never printed, logged or part of an error message.

Output (--format, default json): json is Python's json.dumps(result, indent=4), yaml is \
PyYAML's dump (keys sorted, followed by an empty line), flat is one `key=value …` line per \
pool or per session node (sorted by pool, hostname, ipaddr); exactly as upstream's client.

Errors reported by the API (bad credentials, unknown pool, not enough nodes, …) are printed \
as the document {\"error\": {\"detail\": \"…\"}} with exit status 0 in json and yaml, like \
upstream's client (scripts test the document); in flat format as `error='…'`, with exit \
status 1 and the detail on standard error. Other failures (server unreachable, unexpected \
response) print one line on standard error and exit 1; bad arguments or a missing URL or \
credentials exit 2.";

/// Output format of `duffy client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientFormat {
    Json,
    Yaml,
    Flat,
}

#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct ClientArgs {
    /// The base URL of the Duffy API (default: config `client.url`)
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The tenant name to authenticate with (default: config `client.auth.name`)
    #[arg(long, global = true, value_name = "NAME")]
    pub auth_name: Option<String>,
    /// The tenant's API key (default: config `client.auth.key`; `-`: read it from stdin)
    #[arg(long, global = true, value_name = "KEY|-")]
    pub auth_key: Option<String>,
    /// Format with which to print results
    #[arg(long, global = true, value_enum, ignore_case = true, default_value_t = ClientFormat::Json)]
    pub format: ClientFormat,
    #[command(subcommand)]
    pub cmd: ClientCmd,
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// List configured Duffy node pools
    ListPools,
    /// Show information about a Duffy node pool
    ShowPool { name: String },
    /// Query active sessions for this tenant on the Duffy API
    ListSessions,
    /// Show one session identified by its id on the Duffy API
    ShowSession { session_id: i64 },
    /// Request a session with nodes from the Duffy API
    RequestSession {
        /// One or more `pool=<pool>,quantity=<quantity>`
        #[arg(
            required = true,
            num_args = 1..,
            value_name = "pool=POOL,quantity=N",
            value_parser = client::parse_nodes_spec
        )]
        nodes_specs: Vec<NodesSpec>,
    },
    /// Retire an active Duffy session
    RetireSession { session_id: i64 },
    /// Extend an active session (not in upstream's client)
    ///
    /// `--expires-at +2h` adds to the session's current expiry (`-30m` shortens it), an ISO
    /// 8601 datetime (UTC) sets it. The server caps it at the tenant's maximum session lifetime.
    /// Sends `PUT /sessions/ID {"expires_at": …}`.
    UpdateSession {
        session_id: i64,
        /// `+DURATION`/`-DURATION` (e.g. +2h, +1h30m) or `YYYY-MM-DDTHH:MM:SS`
        #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
        expires_at: String,
    },
}

impl ClientCmd {
    fn needs_auth(&self) -> bool {
        !matches!(self, ClientCmd::ListPools | ClientCmd::ShowPool { .. })
    }
}

fn non_empty(s: Option<&String>) -> Option<String> {
    s.filter(|s| !s.is_empty()).cloned()
}

fn read_key_from_stdin() -> Result<String, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Usage(format!("--auth-key -: can't read standard input: {e}")))?;
    let key = line.trim().to_string();
    if key.is_empty() {
        return Err(CliError::Usage(
            "--auth-key -: no key on standard input".into(),
        ));
    }
    Ok(key)
}

pub fn run(a: ClientArgs, cfg: &Config) -> CliResult {
    let conf = cfg.client.as_ref();
    let url = non_empty(a.url.as_ref())
        .or_else(|| conf.and_then(|c| c.url.clone()))
        .ok_or_else(|| {
            CliError::Usage(
                "no Duffy API URL: set `client.url` in the configuration (~/.config/duffy) or \
                 use --url"
                    .into(),
            )
        })?;
    let conf_auth = conf.and_then(|c| c.auth.as_ref());
    let name = non_empty(a.auth_name.as_ref()).or_else(|| conf_auth.and_then(|x| x.name.clone()));
    let key = match non_empty(a.auth_key.as_ref()) {
        Some(k) if k == "-" => Some(read_key_from_stdin()?),
        Some(k) => Some(k),
        None => conf_auth.and_then(|x| x.key.map(|k| k.to_string())),
    };
    let auth = match (&name, &key) {
        (Some(n), Some(k)) => Some((n.as_str(), k.as_str())),
        _ if a.cmd.needs_auth() => {
            let missing = match (&name, &key) {
                (None, None) => "tenant name and API key",
                (None, _) => "tenant name",
                _ => "API key",
            };
            return Err(CliError::Usage(format!(
                "no {missing}: set `client.auth.name` and `client.auth.key` in the \
                 configuration (~/.config/duffy) or use --auth-name/--auth-key"
            )));
        }
        _ => None,
    };
    if let ClientCmd::UpdateSession { expires_at, .. } = &a.cmd {
        let t = expires_at.trim();
        if (t.starts_with('+') || t.starts_with('-'))
            && crate::duration::parse_relative_duration(t).is_err()
        {
            return Err(CliError::Usage(format!(
                "--expires-at: invalid duration {expires_at:?} (expected e.g. +2h, +1h30m, -30m)"
            )));
        }
    }

    let format = a.format;
    let list = matches!(a.cmd, ClientCmd::ListPools | ClientCmd::ListSessions);
    let result = db::block_on(async {
        let c = Client::new(&url, auth)?;
        match &a.cmd {
            ClientCmd::ListPools => c.list_pools().await,
            ClientCmd::ShowPool { name } => c.show_pool(name).await,
            ClientCmd::ListSessions => c.list_sessions().await,
            ClientCmd::ShowSession { session_id } => c.show_session(*session_id).await,
            ClientCmd::RequestSession { nodes_specs } => c.request_session(nodes_specs).await,
            ClientCmd::RetireSession { session_id } => c.retire_session(*session_id).await,
            ClientCmd::UpdateSession {
                session_id,
                expires_at,
            } => c.update_session(*session_id, expires_at).await,
        }
    })
    .map_err(|e| match e {
        e @ ClientError::Url { .. } => CliError::Usage(e.to_string()),
        e => CliError::Other(e.to_string()),
    })?;
    print_result(&result, format, list)
}

/// Print like upstream (`click.echo`): the formatted text and a newline, except that the list
/// commands print nothing at all for an empty result.
fn print_result(result: &Value, format: ClientFormat, list: bool) -> CliResult {
    let text = match format {
        ClientFormat::Json => output::client::format_json(result),
        ClientFormat::Yaml => output::client::format_yaml(result),
        ClientFormat::Flat => output::client::format_flat(result),
    };
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        out.write_all(text.as_bytes())?;
        if !(list && text.is_empty()) {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    if let Err(e) = write() {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CliError::Other(format!("can't write the output: {e}")));
        }
    }
    if format == ClientFormat::Flat && client::is_error(result) {
        let detail = result["error"]
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("API error");
        return Err(CliError::Other(detail.to_string()));
    }
    Ok(())
}
