//! Validation of tenants' SSH public keys (the text that ends up in nodes' `authorized_keys`).
//! Several keys are allowed, one per line; blank lines and `#` comment lines are kept but a
//! text must hold at least one key. Each key line must parse as an OpenSSH public key.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SshKeyError {
    #[error("ssh_key: no SSH public key given")]
    Empty,
    #[error("ssh_key: line {line}: not a valid OpenSSH public key ({reason})")]
    Invalid { line: usize, reason: String },
    /// never says more: the text is secret
    #[error("ssh_key: this is a private key (not shown); give the public key (the .pub file)")]
    PrivateKey,
}

/// Does `text` hold private key material (OpenSSH, PEM, SSH2 or PuTTY format)? Such text is
/// refused and never shown, wherever it is given: [`validate`], and the CLI's argument errors.
pub fn looks_private(text: &str) -> bool {
    text.contains("PRIVATE KEY") || text.contains("PuTTY-User-Key-File-")
}

/// Check `text` and return it normalised (surrounding blank space trimmed, one key per line).
pub fn validate(text: &str) -> Result<String, SshKeyError> {
    if looks_private(text) {
        return Err(SshKeyError::PrivateKey);
    }
    let mut keys = 0;
    let mut lines = Vec::new();
    for (i, raw) in text.trim().lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            lines.push(line.to_string());
            continue;
        }
        if line.contains("### DUFFY tenant credentials") {
            return Err(SshKeyError::Invalid {
                line: i + 1,
                reason: "contains duffy's authorized_keys marker".into(),
            });
        }
        ssh_key::PublicKey::from_openssh(line).map_err(|e| SshKeyError::Invalid {
            line: i + 1,
            reason: e.to_string(),
        })?;
        keys += 1;
        lines.push(line.to_string());
    }
    if keys == 0 {
        return Err(SshKeyError::Empty);
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFiBq493m1tooYiALmd9PJpwszntYIJ62bvnYyaDsrQA demo@ci";

    #[test]
    fn accepts_one_or_several_keys() {
        assert_eq!(validate(&format!("  {ED}\n")).unwrap(), ED);
        let two = format!("{ED}\n# second\n{ED}");
        assert_eq!(validate(&two).unwrap(), two);
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        assert_eq!(validate("").unwrap_err(), SshKeyError::Empty);
        assert_eq!(
            validate("# only a comment").unwrap_err(),
            SshKeyError::Empty
        );
        let e = validate(&format!("{ED}\nssh-rsa AAAAnotbase64!!")).unwrap_err();
        assert!(matches!(e, SshKeyError::Invalid { line: 2, .. }), "{e}");
        assert!(validate("ssh-ed25519").is_err());
        assert!(validate("hello world").is_err());
    }

    #[test]
    fn private_keys_are_refused_without_a_word_of_them() {
        for text in [
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG\n",
            "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nP2/56wAAA\n",
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
        ] {
            let e = validate(&format!("{ED}\n{text}")).unwrap_err();
            assert_eq!(e, SshKeyError::PrivateKey);
            let msg = e.to_string();
            for line in text.lines().filter(|l| l.len() > 8) {
                assert!(!msg.contains(line), "{msg}");
            }
        }
    }
}
