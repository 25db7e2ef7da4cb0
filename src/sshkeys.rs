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
}

/// Check `text` and return it normalised (surrounding blank space trimmed, one key per line).
pub fn validate(text: &str) -> Result<String, SshKeyError> {
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
}
