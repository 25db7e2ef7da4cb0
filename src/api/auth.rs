//! HTTP Basic authentication of tenants (compat spec §4.2).
//!
//! The stored key is a bcrypt hash (cost 12, ~0.3 s of CPU per check — upstream pays it on every
//! request). duffy checks bcrypt once per (tenant, stored hash, key) and then remembers an
//! HMAC-SHA256 of the key under a random per-process secret; later requests compare HMACs in
//! constant time. The cache holds no usable key, dies with the process, and is keyed by the
//! stored hash so a key reset or retirement takes effect at once.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;
use subtle_eq::ct_eq;

use super::http::{holds_nul, ApiError};
use crate::config::Defaults;
use crate::db::{tenants, Db};
use crate::tenant::Tenant;

type HmacSha256 = Hmac<Sha256>;

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

/// Verified-key cache.
pub struct AuthCache {
    secret: [u8; 32],
    /// tenant id → (stored hash, HMAC of the verified key)
    verified: Mutex<HashMap<i32, (String, [u8; 32])>>,
}

impl Default for AuthCache {
    fn default() -> Self {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        secret[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        AuthCache {
            secret,
            verified: Mutex::new(HashMap::new()),
        }
    }
}

impl AuthCache {
    fn mac(&self, key: &str) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("hmac key");
        m.update(key.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// Does `key` match `stored` (bcrypt) for tenant `id`? Uses and fills the cache.
    pub async fn check(&self, id: i32, stored: &str, key: &str) -> bool {
        let mac = self.mac(key);
        if let Some((h, m)) = self.verified.lock().expect("auth cache").get(&id) {
            if h == stored && ct_eq(m, &mac) {
                return true;
            }
        }
        let (stored_c, key_c) = (stored.to_string(), key.to_string());
        let ok = tokio::task::spawn_blocking(move || crate::apikey::verify(&key_c, &stored_c))
            .await
            .unwrap_or(false);
        if ok {
            self.verified
                .lock()
                .expect("auth cache")
                .insert(id, (stored.to_string(), mac));
        }
        ok
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
    let (user, key) = match parse(headers)? {
        Creds::None if required => return Err(ApiError::Unauthenticated("Not authenticated")),
        Creds::None => return Ok(None),
        Creds::Basic(u, k) => (u, k),
    };
    verify_pair(db, cache, defaults, &user, &key)
        .await
        .map(Some)
}

/// Check a (tenant name, API key) pair as Basic auth does: unknown tenant or wrong key → 401
/// `Unauthorized`, retired tenant → 403. Also used by the legacy API for its usermap pairs.
pub async fn verify_pair(
    db: &Db,
    cache: &AuthCache,
    defaults: &Defaults,
    user: &str,
    key: &str,
) -> Result<Tenant, ApiError> {
    let c = db.get().await?;
    let row = tenants::by_name(&**c, user).await?;
    drop(c);
    let unauthorized = || ApiError::Detail(hyper::StatusCode::UNAUTHORIZED, "Unauthorized".into());
    let Some(row) = row else {
        return Err(unauthorized());
    };
    if !cache.check(row.id, &row.api_key_hash, key).await {
        return Err(unauthorized());
    }
    if row.retired_at.is_some() {
        return Err(ApiError::forbidden());
    }
    Ok(Tenant::new(row, defaults))
}
