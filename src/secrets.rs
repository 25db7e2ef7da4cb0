//! The one rule for "does this key name a secret?", and hiding such values in JSON.
//!
//! Every place that shows data it did not write itself asks [`is_secret_key`]: the REST API
//! (node `data` in `/nodes`, `/sessions`, also in `duffy_session`'s output), the dynamic
//! inventory (`duffy_data`), the `duffy_node` module (its `node`/`diff` view and the runtime's
//! output masking) and `duffy config check`/`dump` (through [`crate::config::secrets`]).
//!
//! # The rule
//!
//! A key names a secret when its name, compared case-insensitively, …
//!
//! 1. contains `password`, `passwd`, `passphrase`, `secret` or `token` — `password`,
//!    `BMC_Password`, `ipmi_passwd`, `ssh_passphrase`, `client_secret`, `secrets`, `api_token`;
//! 2. contains `private`, unless `private` qualifies a network name — the next word is `ip`,
//!    `ipaddr`, `ipaddress`, `ipv4`, `ipv6`, `dns`, `dnsname`, `host`, `hostname`, `addr`,
//!    `address`, `net`, `network`, `subnet` (or a plural of these): `private`, `ssh_private`,
//!    `private_pem`, `privateKey` are secrets; EC2's `private_ip_address`, `privateIpAddress`,
//!    `private_dns_name` are not;
//! 3. ends with the word `key` — `key`, `api_key`, `API-KEY`, `ssh.key`, `apiKey` (camelCase),
//!    `ssh_private_key`, `aws_secret_access_key`, and glued `apikey`, `privkey`, `sshkey` —
//!    unless the name says the key is public: it contains `public`, or the word before `key`
//!    is `pub` (`public_key`, `ssh_public_key`, `publicKey`, `pub_key`). `monkey`, `hostkey`,
//!    `pubkey` and plural `ssh_keys` (lists of public keys, as in the artifacts role) do not
//!    end with the *word* `key`.
//!
//! Deliberately **not** secrets: `credential(s)` (names a credential set, like
//! `ipmi.credentials`; the password inside is caught by its own name), `user`, `username`,
//! `auth`, `cookie`, `pin`. Deliberately secrets although they may hold public data: `ssh_key`
//! (ambiguous: could be a private key; a tenant's public `ssh_key` is masked by the API too) and
//! `access_key` (AWS access key ids travel with their secret).
//!
//! Words are separated by `_`, `-`, `.`, space and camelCase humps. The test table in this
//! module is the specification; every consumer is checked against it.
//!
//! # Hiding
//!
//! The *whole* value of a secret-named key is hidden, whatever its type (a string, a number,
//! a mapping such as `secrets: {db: …}`, a list): [`redact`] with [`Redact::Remove`] drops the
//! key (the API and the inventory: what is not there cannot be templated or logged), with
//! [`Redact::Mask`] replaces the value by a mask and keeps `null`s (the `duffy_node` module's
//! view and `config check`, where seeing that a secret is set matters). [`secret_values`]
//! collects the hidden values so that output masking can also hide them where they appear
//! elsewhere (Ansible's `invocation`).

use serde_json::Value;

/// How duffy shows a hidden value in its own output (API bodies, `duffy admin`, `config check`):
/// upstream's ten stars.
pub const MASK: &str = "**********";

/// How a hidden value looks in what Ansible shows (module results, playbook logs): Ansible's
/// `remove_values` eight stars.
pub const ANSIBLE_MASK: &str = "********";

/// What [`redact`] does with the value of a secret-named key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redact<'a> {
    /// drop the key
    Remove,
    /// replace the value (unless `null`) by this text
    Mask(&'a str),
}

/// Does a key's name say that its value is a secret? (The rule: module documentation.) Does
/// not allocate: the inventory asks it for every key of every node.
pub fn is_secret_key(name: &str) -> bool {
    let b = name.as_bytes();
    ends_with_key_word(b)
        || (0..b.len()).any(|i| {
            let rest = &b[i..];
            match b[i].to_ascii_lowercase() {
                b'p' => {
                    starts_ci(rest, b"password")
                        || starts_ci(rest, b"passwd")
                        || starts_ci(rest, b"passphrase")
                        || (starts_ci(rest, b"private") && !network_word_follows(&rest[7..]))
                }
                b's' => starts_ci(rest, b"secret"),
                b't' => starts_ci(rest, b"token"),
                _ => false,
            }
        })
}

/// Hide the values of secret-named keys in `v`, at every depth (objects inside lists too).
pub fn redact(v: &mut Value, how: Redact) {
    match v {
        Value::Object(m) => {
            match how {
                Redact::Remove => m.retain(|k, _| !is_secret_key(k)),
                Redact::Mask(mask) => {
                    for (k, x) in m.iter_mut() {
                        if !x.is_null() && is_secret_key(k) {
                            *x = Value::from(mask);
                        }
                    }
                }
            }
            for x in m.values_mut() {
                redact(x, how);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| redact(x, how)),
        _ => {}
    }
}

/// [`redact`] on a copy.
pub fn redacted(v: &Value, how: Redact) -> Value {
    let mut c = v.clone();
    redact(&mut c, how);
    c
}

/// Push onto `out` what [`redact`] hides: every string and number (as text) inside the value
/// of a secret-named key, at every depth.
pub fn secret_values(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if is_secret_key(k) {
                    scalars(x, out);
                } else {
                    secret_values(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| secret_values(x, out)),
        _ => {}
    }
}

/// Every string and number (as text) in `v`.
pub fn scalars(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|x| scalars(x, out)),
        Value::Object(m) => m.values().for_each(|x| scalars(x, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

fn starts_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn ends_ci(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn is_sep(c: u8) -> bool {
    matches!(c, b'_' | b'-' | b'.' | b' ')
}

/// Does a word of `s` end at `k` (end, separator, or a camelCase hump)?
fn word_ends(s: &[u8], k: usize) -> bool {
    k == s.len() || is_sep(s[k]) || (s[k].is_ascii_uppercase() && s[k - 1].is_ascii_lowercase())
}

/// The last word of `s` (after separators and camelCase humps; trailing separators ignored).
fn last_word(s: &[u8]) -> &[u8] {
    let end = s.iter().rposition(|c| !is_sep(*c)).map_or(0, |i| i + 1);
    let s = &s[..end];
    let start = (1..s.len())
        .rev()
        .find(|&i| is_sep(s[i - 1]) || (s[i].is_ascii_uppercase() && s[i - 1].is_ascii_lowercase()))
        .unwrap_or(0);
    &s[start..]
}

/// Network words after `private` that make it an address, not a secret.
const NETWORK_WORDS: &[&[u8]] = &[
    b"ip",
    b"ips",
    b"ipaddr",
    b"ipaddrs",
    b"ipaddress",
    b"ipaddresses",
    b"ipv4",
    b"ipv6",
    b"dns",
    b"dnsname",
    b"host",
    b"hosts",
    b"hostname",
    b"hostnames",
    b"addr",
    b"addrs",
    b"address",
    b"addresses",
    b"net",
    b"nets",
    b"network",
    b"networks",
    b"subnet",
    b"subnets",
];

/// `rest` follows `private`: is its first word one of [`NETWORK_WORDS`]?
fn network_word_follows(rest: &[u8]) -> bool {
    let r = match rest.first() {
        Some(&c) if is_sep(c) => &rest[1..],
        _ => rest,
    };
    NETWORK_WORDS
        .iter()
        .any(|w| starts_ci(r, w) && word_ends(r, w.len()))
}

/// Rule 3: the name ends with the word `key` (or glued `apikey`/`privkey`/`sshkey`) and does
/// not say the key is public.
fn ends_with_key_word(b: &[u8]) -> bool {
    if !ends_ci(b, b"key") {
        return false;
    }
    let head = &b[..b.len() - 3];
    let word = match head.last() {
        None => true,
        Some(&c) if is_sep(c) => true,
        // camelCase `…Key`
        Some(&c) => b[b.len() - 3..] == *b"Key" && (c.is_ascii_lowercase() || c.is_ascii_digit()),
    };
    let is_key = if word {
        !last_word(head).eq_ignore_ascii_case(b"pub")
    } else {
        ends_ci(head, b"api") || ends_ci(head, b"priv") || ends_ci(head, b"ssh")
    };
    is_key && !b.windows(6).any(|w| w.eq_ignore_ascii_case(b"public"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Key names and whether they name a secret: the specification of the rule.
    const NAMES: &[(&str, bool)] = &[
        ("password", true),
        ("BMC_Password", true),
        ("passwd", true),
        ("ssh_passphrase", true),
        ("client_secret", true),
        ("secrets", true),
        ("api_token", true),
        ("key", true),
        ("api_key", true),
        ("apiKey", true),
        ("APIKEY", true),
        ("private_key", true),
        ("ssh_private_key", true),
        ("privateKey", true),
        ("ssh_private", true),
        ("private", true),
        ("ssh_key", true),
        ("hostname", false),
        ("address", false),
        ("user", false),
        ("credential", false),
        ("ssh_public_key", false),
        ("publicKey", false),
        ("pub_key", false),
        ("private_ip_address", false),
        ("privateIpAddress", false),
        ("private_dns_name", false),
        ("ssh_keys", false),
        ("monkey", false),
        ("architecture", false),
        // rule 1
        ("ipmi_passwd", true),
        ("PASSWORD", true),
        ("db.password", true),
        ("secretary", true),
        ("tokens", true),
        ("refresh-token", true),
        // rule 2
        ("ssh_private_pem", true),
        ("private_pem", true),
        ("PRIVATE", true),
        ("private_ipsec_psk", true),
        ("private_hostkey", true),
        ("private_host_key", true),
        ("PRIVATE_IP", false),
        ("private_ips", false),
        ("private-ipv4", false),
        ("privateipaddress", false),
        ("private_hostname", false),
        ("private_network", false),
        ("private.subnet", false),
        // rule 3
        ("KEY", true),
        ("API-KEY", true),
        ("ssh.key", true),
        ("x_apikey", true),
        ("privkey", true),
        ("SSHKEY", true),
        ("ApiKey", true),
        ("aws_secret_access_key", true),
        ("aws_access_key", true),
        ("encryption_key", true),
        ("host_pub_key", false),
        ("PUB_KEY", false),
        ("ssh_pubKey", false),
        ("pubkey", false),
        ("public_token", true),
        ("hostkey", false),
        ("hockey", false),
        ("turKey", true),
        ("keys", false),
        ("keyring", false),
        ("pxe_ssh_keys", false),
        ("lab_duffy_pubkey", false),
        ("key_name", false),
        // neither
        ("", false),
        ("credentials", false),
        ("username", false),
        ("ec2_instance_id", false),
        ("nodes_spec", false),
        ("error", false),
        ("ümlaut_key", true),
    ];

    #[test]
    fn the_rule_table() {
        let wrong: Vec<String> = NAMES
            .iter()
            .filter(|(n, want)| is_secret_key(n) != *want)
            .map(|(n, want)| format!("{n:?}: expected {want}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn redact_remove_mask_and_collect() {
        let v = json!({"a": 1, "password": "p", "n": null, "token": null,
                       "sub": {"secrets": {"db": "x"}, "list": [{"api_key": 7}, "plain"]},
                       "tokens": ["t1", {"t": "t2"}]});
        assert_eq!(
            redacted(&v, Redact::Remove),
            json!({"a": 1, "n": null, "sub": {"list": [{}, "plain"]}})
        );
        assert_eq!(
            redacted(&v, Redact::Mask("***")),
            json!({"a": 1, "password": "***", "n": null, "token": null,
                   "sub": {"secrets": "***", "list": [{"api_key": "***"}, "plain"]},
                   "tokens": "***"})
        );
        let mut found = Vec::new();
        secret_values(&v, &mut found);
        assert_eq!(found, ["p", "x", "7", "t1", "t2"]);
        // scalars: not secret-named at the top
        let mut all = Vec::new();
        scalars(&json!(["a", 1.5, true, null, {"k": "b"}]), &mut all);
        assert_eq!(all, ["a", "1.5", "b"]);
    }

    /// Values of every shape under the key: all of them hidden, or none.
    fn shapes(v: &str) -> Vec<Value> {
        vec![json!(v), json!({"x": v}), json!([v]), json!([{"y": v}])]
    }

    fn shows(out: &str, v: &str) -> bool {
        out.contains(v)
    }

    /// There is one rule: the consumers — the inventory's `duffy_data`, the API's node `data`,
    /// the `duffy_node` module's view and `config check`'s masking — hide exactly what the
    /// table says, for values of every shape, at the top and nested. (Before, three copies
    /// disagreed: e.g. `private` was hidden by the inventory only, `secrets: {db: …}` showed
    /// `db` everywhere but in the inventory, the API hid nothing.)
    #[test]
    fn every_consumer_hides_the_same_keys() {
        let mut wrong = Vec::new();
        for (i, (name, secret)) in NAMES.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let v = format!("VALUE-{i}-X");
            for shape in shapes(&v) {
                let data = json!({ *name: shape.clone(), "outer": { *name: shape.clone() } });
                let inventory = crate::inventory::public_data(data.clone()).to_string();
                let yaml: serde_yaml::Value = serde_yaml::to_value(&data).unwrap();
                let config = serde_yaml::to_string(&crate::config::secrets::mask(&yaml)).unwrap();
                let node = crate::db::nodes::Node {
                    id: 1,
                    hostname: None,
                    ipaddr: None,
                    state: crate::state::NodeState::Ready,
                    comment: None,
                    pool: None,
                    reusable: false,
                    data: data.clone(),
                    created_at: chrono::NaiveDateTime::default(),
                    retired_at: None,
                };
                let api = Value::Object(crate::alloc::node_json(&node, None)).to_string();
                let module = crate::ansible::node::view(&node).to_string();
                for (who, out) in [
                    ("inventory", &inventory),
                    ("duffy_node", &module),
                    ("config", &config),
                    ("api", &api),
                ] {
                    if shows(out, &v) == *secret {
                        wrong.push(format!("{who}: {name} = {shape}: {out}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "disagreements:\n{}", wrong.join("\n"));
    }
}
