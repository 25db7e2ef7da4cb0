//! Tenant API keys.
//!
//! Keys are random UUIDv4s (what upstream's clients send as the HTTP Basic password). They are
//! stored exactly as upstream stores them — a bcrypt hash (`$2b$12$…`) of the canonical text
//! form — so a database leak does not leak usable keys, upstream's server keeps working on a
//! duffy database and duffy accepts every key of an adopted upstream database. Verification
//! compares in constant time. (The REST API adds a keyed in-memory cache on top, so bcrypt's
//! ~0.3 s runs once per key and process, not per request, and bounds what wrong keys cost:
//! `api::auth`.)

use uuid::Uuid;

/// bcrypt cost used by upstream (`bcrypt.gensalt()` default).
pub const BCRYPT_COST: u32 = 12;

/// A fresh random key.
pub fn generate() -> Uuid {
    Uuid::new_v4()
}

/// Parse a key given by an operator (`update-tenant --api-key`): any UUID spelling, stored in
/// canonical lowercase hyphenated form as upstream does.
pub fn parse(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s.trim()).ok()
}

/// The stored form of `key`.
pub fn hash(key: &Uuid) -> String {
    hash_with_cost(key, BCRYPT_COST)
}

/// The stored form of `key` with an explicit bcrypt cost (tests use a low one).
pub fn hash_with_cost(key: &Uuid, cost: u32) -> String {
    bcrypt::hash(key.hyphenated().to_string(), cost).expect("bcrypt cost within 4..=31")
}

/// Does the presented password (raw Basic-auth string) match the stored hash?
/// Like upstream, the raw string is checked: an upper-case spelling of a key does not match.
/// The bcrypt crate compares the digests in constant time.
pub fn verify(presented: &str, stored: &str) -> bool {
    stored.starts_with("$2") && bcrypt::verify(presented, stored).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_case_sensitivity() {
        let k = generate();
        let h = hash_with_cost(&k, 4);
        assert!(h.starts_with("$2b$04$"), "{h}");
        assert!(verify(&k.to_string(), &h));
        assert!(!verify(&k.to_string().to_uppercase(), &h));
        assert!(!verify(&generate().to_string(), &h));
        assert!(!verify(&k.to_string(), "plain"));
    }

    #[test]
    fn verifies_python_bcrypt_hashes() {
        // produced by Python: bcrypt.hashpw(b"ae6c10d0-0b13-554c-b976-a05d8a18f0cc", bcrypt.gensalt(4))
        let h = "$2b$04$C3ZKFLyHMasNCsT5fAaO/umNR4MCdziwZP17iNCC.OKLLJ5cT7YVq";
        assert!(verify("ae6c10d0-0b13-554c-b976-a05d8a18f0cc", h));
        assert!(!verify("wrong", h));
        let ours = bcrypt::hash("ae6c10d0-0b13-554c-b976-a05d8a18f0cc", 4).unwrap();
        let as_2a = ours.replacen("$2b$", "$2a$", 1);
        assert!(verify("ae6c10d0-0b13-554c-b976-a05d8a18f0cc", &as_2a));
    }
}
