//! HTTP Basic authentication of tenants (compat spec §4.2), and what it may cost.
//!
//! The stored key is a bcrypt hash (cost 12, ~0.3 s of CPU per check — upstream pays it on every
//! request). duffy checks bcrypt once per (tenant, stored hash, key) and then remembers an
//! HMAC-SHA256 of the key under a random per-process secret; later requests compare HMACs in
//! constant time. The cache holds no usable key, dies with the process, and is keyed by the
//! stored hash so a key reset or retirement takes effect at once.
//!
//! Wrong keys are bounded so that they can neither take every core nor tell which names exist
//! (the rule, in this order, for every credential check of the v1 and legacy APIs):
//! 1. **Back-off** (429 `Retry-After`, no database, no bcrypt): a client address (IPv6: its /64)
//!    with `app.auth.failures-per-address` recent wrong keys, or an (address, tenant name) pair
//!    with `failures-per-tenant`, waits 2 s, then twice as long after each further failure, up
//!    to `max-backoff`; one failure is forgotten per minute without failures. A right key
//!    clears its pair. Nothing is ever counted per tenant alone, so an attacker elsewhere never
//!    locks a tenant out; a client sharing the attacker's address (NAT, a proxy in front of
//!    duffy) is backed off with it.
//! 2. **Verified-key cache**: a key verified before is accepted without bcrypt.
//! 3. **Failed-key cache**: a (name, stored hash, key) that failed in the last 15 minutes is
//!    401 again without bcrypt and without a new failure (a stale client retrying costs
//!    nothing and is not backed off for it).
//! 4. **One check at a time per address** (the others wait), then the **bcrypt pool**:
//!    `bcrypt-workers` blocking threads (default 1), first come first served. An unknown name is
//!    checked against a dummy hash of the same cost through the same pool, so it costs and
//!    answers exactly as a known name with a wrong key.
//!
//! All of it is per process: several `duffy serve` processes each keep their own counts
//! (an attacker gets that many times the budget, which stays bounded). Memory is bounded too:
//! each table keeps at most [`TABLE_CAP`] entries, dropping forgotten ones first and everything
//! if that is not enough (back-off then restarts; the pool still bounds the CPU).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;
use subtle_eq::ct_eq;
use tokio::sync::Semaphore;

use super::http::{holds_nul, ApiError};
use crate::config::{AuthLimits, Defaults};
use crate::db::{tenants, Db};
use crate::metrics::LabelledCounter;
use crate::tenant::Tenant;

type HmacSha256 = Hmac<Sha256>;

tokio::task_local! {
    /// The client address of the connection being served (set by `serve_with` around each
    /// connection; hyper's HTTP/1 connection polls its requests' futures in that task).
    pub static PEER: IpAddr;
}

/// Most entries of each in-memory table (back-off counts, failed keys).
pub const TABLE_CAP: usize = 65_536;
/// One failure is forgotten per this much time without failures.
const DECAY: Duration = Duration::from_secs(60);
/// How long a failed key is answered from memory.
const FAILED_TTL: Duration = Duration::from_secs(15 * 60);
/// First back-off, in seconds (doubles with each further failure).
const FIRST_BACKOFF: u64 = 2;

/// A bcrypt hash (cost [`crate::apikey::BCRYPT_COST`]) of no key: what an unknown name is checked
/// against, so that it costs what a known name costs.
const DUMMY_HASH: &str = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";

mod subtle_eq {
    /// Constant-time equality of two 32-byte MACs.
    pub fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
        let mut d = 0u8;
        for (x, y) in a.iter().zip(b.iter()) {
            d |= x ^ y;
        }
        d == 0
    }
}

/// The client address back-off counts: IPv4 as is, IPv6 by its /64 (one host's usual share).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The address of the current request's client (unspecified outside a served connection).
fn current_client() -> IpAddr {
    client_key(
        PEER.try_with(|a| *a)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    )
}

/// Recent failures of one address or (address, name) pair.
#[derive(Clone, Copy)]
struct Strikes {
    n: u32,
    last: Instant,
}

impl Strikes {
    /// Failures still remembered at `now`.
    fn count(&self, now: Instant) -> u32 {
        let forgotten = now.saturating_duration_since(self.last).as_secs() / DECAY.as_secs();
        self.n
            .saturating_sub(u32::try_from(forgotten).unwrap_or(u32::MAX))
    }

    /// Seconds to wait before the next try, if backed off.
    fn retry_after(&self, threshold: u32, max: u64, now: Instant) -> Option<u64> {
        let n = self.count(now);
        if n < threshold {
            return None;
        }
        let doublings = (n - threshold).min(30);
        let delay = Duration::from_secs(FIRST_BACKOFF.saturating_mul(1 << doublings).min(max));
        let left = (self.last + delay).saturating_duration_since(now);
        (!left.is_zero()).then(|| left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }
}

/// Keep `m` under [`TABLE_CAP`] before an insert: drop what `keep` rejects, else everything.
fn make_room<K: Eq + Hash, V>(m: &mut HashMap<K, V>, keep: impl Fn(&V) -> bool) {
    if m.len() >= TABLE_CAP {
        m.retain(|_, v| keep(v));
        if m.len() >= TABLE_CAP {
            m.clear();
        }
    }
}

/// Verified-key cache, failed-key cache, back-off counts and the bcrypt pool of one process.
pub struct AuthCache {
    secret: [u8; 32],
    limits: AuthLimits,
    /// tenant id → (stored hash, HMAC of the verified key)
    verified: Mutex<HashMap<i32, (String, [u8; 32])>>,
    /// HMAC of (name, stored hash, key) → when it failed
    failed: Mutex<HashMap<[u8; 32], Instant>>,
    by_address: Mutex<HashMap<IpAddr, Strikes>>,
    /// (address, HMAC of the name) → strikes
    by_pair: Mutex<HashMap<(IpAddr, [u8; 32]), Strikes>>,
    /// address → its one bcrypt check at a time
    in_flight: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    pool: Arc<Semaphore>,
    /// refused credentials by reason ([`FAILURE_REASONS`]), for `duffy_auth_failures_total`
    pub failures: LabelledCounter,
}

/// Why credentials were refused (the `reason` label of `duffy_auth_failures_total`):
/// `malformed` Basic header, `wrong_key` (unknown tenant or wrong key, a legacy key in no
/// usermap entry), `retired_tenant` (403), `backed_off` (429 before any check).
pub const FAILURE_REASONS: &[&str] = &["malformed", "wrong_key", "retired_tenant", "backed_off"];

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache::new(&AuthLimits::default())
    }
}

impl AuthCache {
    pub fn new(limits: &AuthLimits) -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        AuthCache {
            secret,
            limits: limits.clone(),
            verified: Mutex::default(),
            failed: Mutex::default(),
            by_address: Mutex::default(),
            by_pair: Mutex::default(),
            in_flight: Mutex::default(),
            pool: Arc::new(Semaphore::new(limits.bcrypt_workers.max(1) as usize)),
            failures: LabelledCounter::new(FAILURE_REASONS),
        }
    }

    /// HMAC of the parts, each length-prefixed (no two part lists collide).
    fn mac(&self, parts: &[&str]) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("hmac key");
        for p in parts {
            m.update(&(p.len() as u64).to_le_bytes());
            m.update(p.as_bytes());
        }
        m.finalize().into_bytes().into()
    }

    /// 429 if `client` or (`client`, `name`) is backed off.
    fn refuse_if_backed_off(&self, client: IpAddr, name: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let l = &self.limits;
        let by_addr = self
            .by_address
            .lock()
            .expect("auth table")
            .get(&client)
            .copied();
        let by_pair = {
            let k = (client, self.mac(&[name]));
            self.by_pair.lock().expect("auth table").get(&k).copied()
        };
        let wait = [
            by_addr.and_then(|s| s.retry_after(l.failures_per_address, l.max_backoff, now)),
            by_pair.and_then(|s| s.retry_after(l.failures_per_tenant, l.max_backoff, now)),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(secs) => {
                tracing::info!("auth: {client} backed off for {secs} s after failed keys");
                Err(ApiError::TooManyRequests(secs))
            }
            None => Ok(()),
        }
    }

    /// Count a wrong key of `client` for `name`.
    fn strike(&self, client: IpAddr, name: &str) {
        let now = Instant::now();
        let bump = |s: Option<&Strikes>| Strikes {
            n: s.map_or(0, |s| s.count(now)).saturating_add(1),
            last: now,
        };
        {
            let mut m = self.by_address.lock().expect("auth table");
            make_room(&mut m, |s| s.count(now) > 0);
            let s = bump(m.get(&client));
            m.insert(client, s);
        }
        let k = (client, self.mac(&[name]));
        let mut m = self.by_pair.lock().expect("auth table");
        make_room(&mut m, |s| s.count(now) > 0);
        let s = bump(m.get(&k));
        m.insert(k, s);
    }

    /// A right key: forget the pair's failures.
    fn clear(&self, client: IpAddr, name: &str) {
        let k = (client, self.mac(&[name]));
        self.by_pair.lock().expect("auth table").remove(&k);
    }

    fn failed_recently(&self, fp: &[u8; 32]) -> bool {
        let m = self.failed.lock().expect("auth table");
        m.get(fp).is_some_and(|t| t.elapsed() < FAILED_TTL)
    }

    fn remember_failed(&self, fp: [u8; 32]) {
        let mut m = self.failed.lock().expect("auth table");
        make_room(&mut m, |t| t.elapsed() < FAILED_TTL);
        m.insert(fp, Instant::now());
    }

    /// Was `key` verified before against `stored` for tenant `id`?
    fn verified_before(&self, id: i32, stored: &str, key: &str) -> bool {
        let mac = self.mac(&[key]);
        let m = self.verified.lock().expect("auth cache");
        m.get(&id)
            .is_some_and(|(h, k)| h == stored && ct_eq(k, &mac))
    }

    /// Wait for `client`'s turn: its bcrypt checks run one at a time.
    async fn turn(&self, client: IpAddr) -> Turn<'_> {
        let sem = {
            let mut m = self.in_flight.lock().expect("auth table");
            m.entry(client)
                .or_insert_with(|| Arc::new(Semaphore::new(1)))
                .clone()
        };
        let permit = sem.clone().acquire_owned().await.expect("never closed");
        Turn {
            cache: self,
            client,
            sem,
            permit: Some(permit),
        }
    }

    /// Run bcrypt in the bounded pool. The pool permit moves into the blocking task, so a
    /// client hanging up never lets more checks run at once.
    async fn bcrypt(&self, key: &str, stored: &str) -> bool {
        let permit = self
            .pool
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (k, h) = (key.to_string(), stored.to_string());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            crate::apikey::verify(&k, &h)
        })
        .await
        .unwrap_or(false)
    }

    /// Does `key` open tenant `name` whose stored hash is `stored` (None: no such tenant)?
    /// Follows the module's rule; `Err` is the 429 of a backed-off client.
    async fn check(
        &self,
        client: IpAddr,
        name: &str,
        target: Option<(i32, &str)>,
        key: &str,
    ) -> Result<bool, ApiError> {
        self.refuse_if_backed_off(client, name)?;
        if let Some((id, stored)) = target {
            if self.verified_before(id, stored, key) {
                self.clear(client, name);
                return Ok(true);
            }
        }
        let stored = target.map(|(_, h)| h);
        let fp = self.mac(&[name, stored.unwrap_or(""), key]);
        if self.failed_recently(&fp) {
            return Ok(false);
        }
        let turn = self.turn(client).await;
        // the wait may have been long: look again
        self.refuse_if_backed_off(client, name)?;
        if self.failed_recently(&fp) {
            return Ok(false);
        }
        tracing::debug!(
            "auth: bcrypt check for {} tenant name from {client}",
            if stored.is_some() {
                "a known"
            } else {
                "an unknown"
            }
        );
        let ok = self.bcrypt(key, stored.unwrap_or(DUMMY_HASH)).await;
        drop(turn);
        match target {
            Some((id, stored)) if ok => {
                self.verified
                    .lock()
                    .expect("auth cache")
                    .insert(id, (stored.to_string(), self.mac(&[key])));
                self.clear(client, name);
                Ok(true)
            }
            _ => {
                self.remember_failed(fp);
                self.strike(client, name);
                Ok(false)
            }
        }
    }
}

/// One client's turn at bcrypt; dropping it lets the next one in and forgets an idle client.
struct Turn<'a> {
    cache: &'a AuthCache,
    client: IpAddr,
    sem: Arc<Semaphore>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.permit.take();
        let mut m = self.cache.in_flight.lock().expect("auth table");
        // the table's reference and ours only: nobody is waiting
        if Arc::strong_count(&self.sem) == 2 {
            m.remove(&self.client);
        }
    }
}

/// Credentials found in the request.
enum Creds {
    None,
    Basic(String, String),
}

fn parse(headers: &HeaderMap) -> Result<Creds, ApiError> {
    let Some(v) = headers.get(hyper::header::AUTHORIZATION) else {
        return Ok(Creds::None);
    };
    let v = v.to_str().unwrap_or("");
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(Creds::None);
    }
    let bad = || ApiError::Unauthenticated("Invalid authentication credentials");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (user, pass) = text.split_once(':').ok_or_else(bad)?;
    // no tenant name or key holds NUL, and PostgreSQL could not even look such a name up
    if holds_nul(user) || holds_nul(pass) {
        return Err(bad());
    }
    Ok(Creds::Basic(user.to_string(), pass.to_string()))
}

/// Authenticate the caller. `required`: missing credentials are 401 instead of anonymous.
pub async fn authenticate(
    db: &Db,
    cache: &AuthCache,
    defaults: &Defaults,
    headers: &HeaderMap,
    required: bool,
) -> Result<Option<Tenant>, ApiError> {
    let creds = parse(headers).inspect_err(|_| cache.failures.inc("malformed"))?;
    let (user, key) = match creds {
        Creds::None if required => return Err(ApiError::Unauthenticated("Not authenticated")),
        Creds::None => return Ok(None),
        Creds::Basic(u, k) => (u, k),
    };
    verify_pair(db, cache, defaults, &user, &key)
        .await
        .map(Some)
}

/// Check a (tenant name, API key) pair as Basic auth does: unknown tenant or wrong key → 401
/// `Unauthorized`, retired tenant → 403, backed-off client → 429 (see the module's rule). Also
/// used by the legacy API for its usermap pairs.
pub async fn verify_pair(
    db: &Db,
    cache: &AuthCache,
    defaults: &Defaults,
    user: &str,
    key: &str,
) -> Result<Tenant, ApiError> {
    let r = check_pair(db, cache, defaults, user, key).await;
    match &r {
        Err(ApiError::TooManyRequests(_)) => cache.failures.inc("backed_off"),
        Err(ApiError::Detail(s, _)) if *s == hyper::StatusCode::UNAUTHORIZED => {
            cache.failures.inc("wrong_key")
        }
        Err(ApiError::Detail(s, _)) if *s == hyper::StatusCode::FORBIDDEN => {
            cache.failures.inc("retired_tenant")
        }
        _ => {}
    }
    r
}

/// [`verify_pair`] without the counting.
async fn check_pair(
    db: &Db,
    cache: &AuthCache,
    defaults: &Defaults,
    user: &str,
    key: &str,
) -> Result<Tenant, ApiError> {
    let client = current_client();
    // before the database: a backed-off client costs nothing
    cache.refuse_if_backed_off(client, user)?;
    let c = db.get().await?;
    let row = tenants::by_name(&**c, user).await?;
    drop(c);
    let unauthorized = || ApiError::Detail(hyper::StatusCode::UNAUTHORIZED, "Unauthorized".into());
    let target = row.as_ref().map(|r| (r.id, r.api_key_hash.as_str()));
    if !cache.check(client, user, target, key).await? {
        return Err(unauthorized());
    }
    let Some(row) = row else {
        return Err(unauthorized());
    };
    if row.retired_at.is_some() {
        return Err(ApiError::forbidden());
    }
    Ok(Tenant::new(row, defaults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_costs_what_a_key_costs() {
        let cost = format!("$2b${:02}$", crate::apikey::BCRYPT_COST);
        assert!(DUMMY_HASH.starts_with(&cost), "{DUMMY_HASH}");
        assert!(
            bcrypt::verify("x", DUMMY_HASH).is_ok(),
            "not a bcrypt hash; one: {}",
            bcrypt::hash("duffy: no such tenant", crate::apikey::BCRYPT_COST).unwrap()
        );
    }

    #[test]
    fn back_off_doubles_caps_and_decays() {
        let t0 = Instant::now();
        let s = |n| Strikes { n, last: t0 };
        assert_eq!(s(4).retry_after(5, 300, t0), None);
        assert_eq!(s(5).retry_after(5, 300, t0), Some(2));
        assert_eq!(s(6).retry_after(5, 300, t0), Some(4));
        assert_eq!(s(40).retry_after(5, 300, t0), Some(300));
        assert_eq!(s(5).retry_after(5, 300, t0 + Duration::from_secs(2)), None);
        // one failure forgotten per minute
        assert_eq!(s(6).count(t0 + Duration::from_secs(125)), 4);
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(m), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
