//! The compiled `metaclient` section (compat spec §5): `usermap` (legacy key → tenant),
//! `poolmap` (`ver`/`arch`/`flavor` selectors → a Jinja2 pool-name template; `^…$` selectors are
//! regular expressions matched from the start, the first matching entry wins) and
//! `mangle_hostname`. Compiled once when the server starts, so an invalid template or regular
//! expression is a config error naming its key; rendering uses minijinja set up like Jinja2
//! (`crate::jinja`).

use std::collections::{BTreeMap, HashMap};

use minijinja::{Environment, ErrorKind};
use regex::Regex;
use serde_json::{json, Value};

use crate::config::{Config, ConfigError, MetaclientConfig, RawConfig};
use crate::jinja::jinja2_env;

/// A poolmap selector: `^…$` is a regular expression matched from the start, else exact.
#[derive(Debug)]
enum Selector {
    Exact(String),
    Regex(Regex),
}

impl Selector {
    fn matches(&self, v: &str) -> bool {
        match self {
            Selector::Exact(s) => s == v,
            Selector::Regex(r) => r.find(v).is_some_and(|m| m.start() == 0),
        }
    }
}

#[derive(Debug)]
struct PoolRule {
    /// (`ver` | `arch` | `flavor`, selector)
    selectors: Vec<(&'static str, Selector)>,
    /// template name in the environment
    template: String,
}

/// The compiled `metaclient` section.
pub struct Legacy {
    usermap: HashMap<String, String>,
    poolmap: Vec<PoolRule>,
    env: Environment<'static>,
    mangle: bool,
}

impl std::fmt::Debug for Legacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the usermap: its keys are API keys
        f.debug_struct("Legacy")
            .field("users", &self.usermap.len())
            .field("poolmap", &self.poolmap)
            .field("mangle", &self.mangle)
            .finish()
    }
}

const MANGLE: &str = "mangle_hostname";

/// Errors that a template shows whatever the request: unknown filters, tests, functions.
fn static_template_error(e: &minijinja::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnknownFilter | ErrorKind::UnknownTest | ErrorKind::UnknownFunction
    )
}

fn ctx(pairs: &[(&str, &str)]) -> minijinja::Value {
    let m: BTreeMap<String, minijinja::Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), minijinja::Value::from(*v)))
        .collect();
    minijinja::Value::from_object(m)
}

impl Legacy {
    /// Compile `cfg.metaclient`, if there is one.
    pub fn from_config(cfg: &Config) -> Result<Option<Legacy>, ConfigError> {
        match &cfg.metaclient {
            None => Ok(None),
            Some(m) => Legacy::new(m, &cfg.raw).map(Some),
        }
    }

    /// Compile the templates and selectors; errors name the key (`metaclient.poolmap[1].arch`).
    pub fn new(m: &MetaclientConfig, raw: &RawConfig) -> Result<Legacy, ConfigError> {
        let mut env = jinja2_env();
        let mut poolmap = Vec::with_capacity(m.poolmap.len());
        for (i, e) in m.poolmap.iter().enumerate() {
            let at = format!("metaclient.poolmap[{i}]");
            let mut selectors = Vec::new();
            for (name, v) in [("ver", &e.ver), ("arch", &e.arch), ("flavor", &e.flavor)] {
                // upstream: an empty selector is no selector (`if sel_value:`)
                let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                    continue;
                };
                let sel = if v.starts_with('^') && v.ends_with('$') {
                    Selector::Regex(Regex::new(v).map_err(|err| {
                        raw.invalid(
                            &format!("{at}.{name}"),
                            format!("invalid regular expression {v:?}: {}", one_line(&err)),
                        )
                    })?)
                } else {
                    Selector::Exact(v.to_string())
                };
                selectors.push((name, sel));
            }
            // upstream: an entry whose pool is empty never wins (`if pool_template:`)
            if e.pool.is_empty() {
                continue;
            }
            let name = format!("pool[{i}]");
            let key = format!("{at}.pool");
            env.add_template_owned(name.clone(), e.pool.clone())
                .map_err(|err| raw.invalid(&key, template_error(&e.pool, &err)))?;
            let sample = ctx(&[("ver", "7"), ("arch", "x86_64"), ("flavor", "small")]);
            if let Err(err) = env.get_template(&name).and_then(|t| t.render(sample)) {
                if static_template_error(&err) {
                    return Err(raw.invalid(&key, template_error(&e.pool, &err)));
                }
            }
            poolmap.push(PoolRule {
                selectors,
                template: name,
            });
        }
        let mut mangle = false;
        if let Some(t) = m.mangle_hostname.as_deref().filter(|t| !t.is_empty()) {
            let key = "metaclient.mangle_hostname";
            env.add_template_owned(MANGLE, t.to_string())
                .map_err(|err| raw.invalid(key, template_error(t, &err)))?;
            let sample = ctx(&[("hostname", "n1.example.com")]);
            if let Err(err) = env.get_template(MANGLE).and_then(|tp| tp.render(sample)) {
                if static_template_error(&err) {
                    return Err(raw.invalid(key, template_error(t, &err)));
                }
            }
            mangle = true;
        }
        Ok(Legacy {
            usermap: m.usermap.0.iter().cloned().collect(),
            poolmap,
            env,
            mangle,
        })
    }

    /// The pool for a request (first matching entry wins, its template rendered with the
    /// parameters present); `None`: no entry matches.
    pub fn lookup_pool(
        &self,
        ver: Option<&str>,
        arch: Option<&str>,
        flavor: Option<&str>,
    ) -> Result<Option<String>, minijinja::Error> {
        let params: Vec<(&str, &str)> = [("ver", ver), ("arch", arch), ("flavor", flavor)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        for rule in &self.poolmap {
            let matched = rule
                .selectors
                .iter()
                .all(|(k, sel)| get(k).is_some_and(|v| sel.matches(v)));
            if matched {
                let t = self.env.get_template(&rule.template)?;
                return t.render(ctx(&params)).map(Some);
            }
        }
        Ok(None)
    }

    /// A hostname as the metaclient returns it (JSON: `null` stays `null` without a template).
    pub fn mangle_hostname(&self, hostname: Option<&str>) -> Value {
        if !self.mangle {
            return json!(hostname);
        }
        let h = hostname.unwrap_or("");
        match self
            .env
            .get_template(MANGLE)
            .and_then(|t| t.render(ctx(&[("hostname", h)])))
        {
            Ok(s) => json!(s),
            Err(e) => {
                tracing::warn!(
                    "metaclient.mangle_hostname failed for {h:?}, hostname left as is: {}",
                    one_line(&e)
                );
                json!(hostname)
            }
        }
    }

    /// The tenant name for a legacy key.
    pub(super) fn user(&self, key: &str) -> Option<&str> {
        self.usermap.get(key).map(String::as_str)
    }
}

pub(super) fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn template_error(src: &str, e: &minijinja::Error) -> String {
    let mut msg = format!("invalid Jinja2 template {src:?}: {}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(": ");
        msg.push_str(d);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(yaml: &str) -> Result<Legacy, ConfigError> {
        let mut raw = RawConfig::default();
        raw.merge_str(yaml, "t.yaml").unwrap();
        let cfg = Config::from_raw(raw).unwrap();
        Legacy::from_config(&cfg).map(Option::unwrap)
    }

    const ROLE_MAP: &str = "metaclient:
  usermap: {k1: t1}
  poolmap:
    - arch: '^(aarch64|ppc64|ppc64le)$'
      pool: \"virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('medium') }}\"
    - arch: x86_64
      pool: \"virtual-centos{{ ver | replace('-', '') }}-{{ arch }}-{{ flavor | default('small') }}\"
  mangle_hostname: \"{{ hostname | replace('.ci.centos.org', '') }}\"
";

    #[test]
    fn poolmap_like_upstream() {
        // expected values: upstream's lookup_pool_from_map (Jinja2 3.1) on the same map
        let l = legacy(ROLE_MAP).unwrap();
        let p = |v, a, f| l.lookup_pool(v, a, f).unwrap();
        assert_eq!(
            p(Some("8-stream"), Some("x86_64"), None).as_deref(),
            Some("virtual-centos8stream-x86_64-small")
        );
        assert_eq!(
            p(Some("8-stream"), Some("aarch64"), None).as_deref(),
            Some("virtual-centos8stream-aarch64-medium")
        );
        assert_eq!(
            p(Some("9"), Some("ppc64le"), Some("large")).as_deref(),
            Some("virtual-centos9-ppc64le-large")
        );
        assert_eq!(
            p(Some(""), Some("x86_64"), Some("")).as_deref(),
            Some("virtual-centos-x86_64-")
        );
        assert_eq!(p(Some("7"), Some("i386"), None), None);
        assert_eq!(p(Some("7"), Some("aarch64x"), None), None);
        assert_eq!(p(Some("7"), None, None), None);
        assert_eq!(
            l.mangle_hostname(Some("n1.ci.centos.org")),
            json!("n1"),
            "mangled"
        );
        assert_eq!(l.mangle_hostname(None), json!(""));
    }

    #[test]
    fn regex_selectors_match_from_the_start_and_first_match_wins() {
        let l = legacy(
            "metaclient:
  poolmap:
    - {ver: '^9', arch: x86_64, pool: 'first'}
    - {ver: '^(8|9)$', pool: 'second-{{ ver }}'}
    - {ver: '', flavor: '', pool: 'catch-all-{{ flavor }}'}
",
        )
        .unwrap();
        let p = |v, a, f| l.lookup_pool(v, a, f).unwrap();
        // '^9' does not end with '$': an exact string, not a regex
        assert_eq!(
            p(Some("9"), Some("x86_64"), None).as_deref(),
            Some("second-9")
        );
        assert_eq!(
            p(Some("^9"), Some("x86_64"), None).as_deref(),
            Some("first")
        );
        assert_eq!(
            p(Some("7"), Some("x86_64"), Some("tiny")).as_deref(),
            Some("catch-all-tiny")
        );
        assert_eq!(
            p(Some("7"), Some("x86_64"), None).as_deref(),
            Some("catch-all-")
        );
        assert_eq!(l.mangle_hostname(Some("h.example")), json!("h.example"));
        assert_eq!(l.mangle_hostname(None), Value::Null);
    }

    #[test]
    fn templates_render_like_jinja2() {
        // expected values from jinja2.Template(src).render(**ctx) (Jinja2 3.1.6)
        let env = jinja2_env();
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("{{ x }}", &[], ""),
            ("{{ x | replace('a','b') }}", &[], ""),
            ("{{ x | default('d') }}", &[], "d"),
            ("{{ x | default('d') }}", &[("x", "")], ""),
            ("{{ x | default('d', true) }}", &[("x", "")], "d"),
            ("{{ x | upper }}", &[("x", "ab")], "AB"),
            ("{{ x | lower }}{{ x|length }}", &[("x", "AB")], "ab2"),
            ("{{ x ~ 'z' }}", &[], "z"),
            ("{% if x %}yes{% else %}no{% endif %}", &[], "no"),
            ("a\n", &[], "a"),
            (
                "{{ x | replace('-', '') | upper }}",
                &[("x", "8-stream")],
                "8STREAM",
            ),
            ("{{ x | trim }}", &[("x", " a ")], "a"),
            ("{{ x }}", &[("x", "<&>")], "<&>"),
            ("{{ x[0] }}", &[("x", "abc")], "a"),
            ("{{ x.split('-')[0] }}", &[("x", "8-stream")], "8"),
            ("{{ x.split('.')[0] }}", &[("x", "n1.ci.centos.org")], "n1"),
            ("{{ x | int + 1 }}", &[("x", "8")], "9"),
            ("{{ x is defined }}", &[], "False"),
            ("{{ x is none }}", &[], "False"),
            ("{{ x | string }}", &[], ""),
        ];
        for (src, c, want) in cases {
            let got = env.render_str(src, ctx(c));
            assert_eq!(got.as_deref().ok(), Some(*want), "{src} {c:?}: {got:?}");
        }
    }

    #[test]
    fn invalid_templates_and_regexes_are_config_errors_naming_the_key() {
        let cases = [
            (
                "metaclient: {poolmap: [{pool: a}, {pool: '{{ ver '}]}",
                "t.yaml: metaclient.poolmap[1].pool: invalid Jinja2 template",
            ),
            (
                "metaclient: {poolmap: [{pool: '{{ ver | nosuchfilter }}'}]}",
                "t.yaml: metaclient.poolmap[0].pool: invalid Jinja2 template",
            ),
            (
                "metaclient: {poolmap: [{pool: a}, {pool: b}, {arch: '^(x86_64$', pool: c}]}",
                "t.yaml: metaclient.poolmap[2].arch: invalid regular expression",
            ),
            (
                "metaclient: {mangle_hostname: '{% if %}'}",
                "t.yaml: metaclient.mangle_hostname: invalid Jinja2 template",
            ),
        ];
        for (yaml, want) in cases {
            let e = legacy(yaml).unwrap_err().to_string();
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
    }
}
