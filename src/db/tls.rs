//! TLS to PostgreSQL, with libpq's `sslmode` semantics (rustls, ring).
//!
//! `sslmode` (and `sslrootcert`) come from the database URL (`?sslmode=verify-full&sslrootcert=
//! /etc/duffy/db-ca.pem`, or `sslmode=require` in a keyword string); [`super::url::parse`]
//! takes them out before tokio-postgres sees the URL, since it knows neither `verify-ca` nor
//! `verify-full`.
//!
//! - `disable` (duffy's default when the URL says nothing: the common case is a database on the
//!   same host, where TLS only costs time) — plain connection;
//! - `prefer`, `require` — encrypted if the server offers TLS (`prefer`) or always (`require`),
//!   the certificate not verified (libpq's meaning of these modes), unless `sslrootcert` is
//!   given, which makes `require` verify the chain like `verify-ca` (as libpq does);
//! - `verify-ca` — the chain must lead to `sslrootcert`, else to the system's or Mozilla's roots;
//! - `verify-full` — as `verify-ca`, and the certificate must name the host connected to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    #[default]
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The mode tokio-postgres negotiates with (it only knows whether TLS is tried/required).
    pub fn negotiation(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable => T::Disable,
            SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }
}

/// How to secure connections: the mode and an optional CA file (`sslrootcert`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why no TLS connector could be set up (before any connection is tried).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `sslrootcert` cannot be read or holds no usable certificate.
    #[error("sslrootcert {}: {msg}", path.display())]
    RootCert { path: PathBuf, msg: String },
    #[error("TLS roots: {0}")]
    Roots(String),
    #[error("TLS: {0}")]
    Config(String),
}

fn roots(file: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if let Some(f) = file {
        let bad = |msg: String| TlsSetupError::RootCert {
            path: f.to_path_buf(),
            msg,
        };
        let pem = std::fs::read(f).map_err(|e| bad(e.to_string()))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    } else {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Ok(roots)
}

/// The connector for `tls` (used for every mode: with `disable` it is never asked).
pub fn connector(tls: &Tls) -> Result<MakeRustlsConnect, TlsSetupError> {
    let provider = provider();
    let verify_chain = matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        || (tls.mode == SslMode::Require && tls.root_cert.is_some());
    let webpki = if verify_chain {
        Some(
            WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(tls.root_cert.as_deref())?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsSetupError::Roots(e.to_string()))?,
        )
    } else {
        None
    };
    let verifier = Arc::new(Verifier {
        webpki,
        check_name: tls.mode == SslMode::VerifyFull,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The server certificate check of a mode. Without `webpki` (`prefer`/`require` without a CA)
/// the certificate is not checked (libpq's semantics) but the handshake signatures still are;
/// with it the chain is verified, the host name only when `check_name` (`verify-full`).
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
