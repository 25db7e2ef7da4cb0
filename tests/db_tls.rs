//! TLS to PostgreSQL (`sslmode`, `sslrootcert` in the database URL) against the machine's real
//! PostgreSQL, which Debian sets up with `ssl = on` and its self-signed "snakeoil" certificate
//! (CN and DNS name `localhost`). Whether a connection is encrypted is asked of the server
//! itself (`pg_stat_ssl` of the connection's own backend).

mod common;

use common::*;
use duffy::db::{self, Db};

/// Debian's PostgreSQL certificate, the CA of the `verify-*` cases.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn with_params(url: &str, params: &str) -> String {
    format!("{url}{}{params}", if url.contains('?') { '&' } else { '?' })
}

/// Connect with `url` through the library (the pool every duffy program uses) and ask the
/// server whether this connection is encrypted.
fn encrypted(url: &str) -> Result<bool, String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        db::block_on(async move {
            let d = Db::connect(&url, 1).await.map_err(|e| e.to_string())?;
            let c = d.get().await.map_err(|e| e.to_string())?;
            let row = c
                .query_one(
                    "SELECT coalesce(ssl, false) FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, bool>(0))
        })
    })
    .join()
    .unwrap()
}

#[test]
fn sslmode_in_the_url_is_honoured() {
    let t = TestDb::migrated();
    assert_eq!(
        t.one("SHOW ssl"),
        "on",
        "this test needs the test PostgreSQL to offer TLS (Debian's default: ssl = on)"
    );
    // no sslmode: duffy's default is a plain connection (libpq would try TLS)
    assert_eq!(encrypted(&t.url), Ok(false));
    assert_eq!(
        encrypted(&with_params(&t.url, "sslmode=disable")),
        Ok(false)
    );
    // prefer/require: encrypted, the certificate not verified (libpq's semantics)
    assert_eq!(encrypted(&with_params(&t.url, "sslmode=prefer")), Ok(true));
    assert_eq!(encrypted(&with_params(&t.url, "sslmode=require")), Ok(true));

    // verify-full against the system roots: the self-signed certificate is refused
    let e = encrypted(&with_params(&t.url, "sslmode=verify-full")).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");

    // with the server's certificate as CA: verify-ca passes for 127.0.0.1, verify-full only
    // for the name in the certificate
    let ca = format!("sslrootcert={SNAKEOIL}");
    assert_eq!(
        encrypted(&with_params(&t.url, &format!("sslmode=verify-ca&{ca}"))),
        Ok(true)
    );
    let e = encrypted(&with_params(&t.url, &format!("sslmode=verify-full&{ca}"))).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let by_name = t.url.replace("@127.0.0.1:", "@localhost:");
    assert_ne!(by_name, t.url, "the test URL names 127.0.0.1");
    assert_eq!(
        encrypted(&with_params(&by_name, &format!("sslmode=verify-full&{ca}"))),
        Ok(true)
    );
    // require with a CA verifies the chain, as libpq does
    assert_eq!(
        encrypted(&with_params(&t.url, &format!("sslmode=require&{ca}"))),
        Ok(true)
    );

    // bad settings: one line naming the key, no password
    let secret_url = t.url.replace("postgres@", "postgres:hunter2secret@");
    let e = encrypted(&with_params(&secret_url, "sslmode=sometimes")).unwrap_err();
    assert!(e.contains("sslmode") && !e.contains("hunter2secret"), "{e}");
    let e = encrypted(&with_params(
        &t.url,
        "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
    ))
    .unwrap_err();
    assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
}

/// The duffy binary with a TLS URL in its config: migrate, admin, and the inventory's own
/// connection all go through it.
#[test]
fn the_cli_connects_with_tls() {
    let t = TestDb::empty();
    let url = with_params(&t.url, "sslmode=require");
    let cfg = TestConfig::new(&url, "");
    ok(&duffy(Some(&cfg.path), &["migrate"]));
    let out = ok(&duffy(
        Some(&cfg.path),
        &["admin", "create-tenant", "tls-tenant", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl tls@test"],
    ));
    assert!(out.starts_with("OK: tls-tenant: "), "{out}");
    assert_eq!(
        t.one("SELECT name FROM tenants"),
        "tls-tenant",
        "written through the TLS connection"
    );
    let bad = TestConfig::new(&with_params(&t.url, "sslmode=verify-full"), "");
    let o = duffy(Some(&bad.path), &["admin", "list-tenants"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("certificate") && err.lines().count() == 1,
        "{err}"
    );
}
