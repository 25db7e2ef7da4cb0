//! A small client of beanstalkd's text protocol (`doc/protocol.txt` of beanstalkd): what the
//! event bus needs to publish (`use`, `put`) and what a consumer needs (`watch`, `ignore`,
//! `reserve-with-timeout`, `delete`), over one TCP connection, every answer awaited within a
//! time limit. No crate of the ecosystem is both async and kept up; the protocol is a handful
//! of CRLF-terminated lines.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What went wrong talking to beanstalkd (never a job's body).
#[derive(Debug, thiserror::Error)]
pub enum BeanstalkdError {
    #[error("beanstalkd {addr}: cannot connect: {msg}")]
    Connect { addr: String, msg: String },
    #[error("beanstalkd {addr}: {msg}")]
    Io { addr: String, msg: String },
    #[error("beanstalkd {addr}: no answer to {command} within {limit:?}")]
    Timeout {
        addr: String,
        command: String,
        limit: Duration,
    },
    /// beanstalkd answered with an error (`JOB_TOO_BIG`, `DRAINING`, `OUT_OF_MEMORY`, …)
    #[error("beanstalkd {addr}: {command} refused: {reply}")]
    Refused {
        addr: String,
        command: String,
        reply: String,
    },
    #[error("beanstalkd {addr}: unexpected answer to {command}: {reply:?}")]
    Protocol {
        addr: String,
        command: String,
        reply: String,
    },
}

impl BeanstalkdError {
    /// The server is out of reach or the connection broke (rather than a refusal).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BeanstalkdError::Connect { .. }
                | BeanstalkdError::Io { .. }
                | BeanstalkdError::Timeout { .. }
        )
    }
}

/// Where a put job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// `INSERTED <id>`
    Inserted(u64),
    /// `BURIED <id>`: stored, but buried (the server ran out of memory growing a queue)
    Buried(u64),
}

/// A reserved job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub body: Vec<u8>,
}

/// A tube name as beanstalkd accepts it: 1 to 200 bytes of `A-Z a-z 0-9 - + / ; . $ _ ( )`,
/// not starting with `-`.
pub fn check_tube(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-+/;.$_()".contains(c);
    if name.is_empty() || name.len() > 200 {
        return Err(format!(
            "must be 1 to 200 characters, got {} ({name:?})",
            name.len()
        ));
    }
    if name.starts_with('-') || !name.chars().all(ok_char) {
        return Err(format!(
            "must be letters, digits and - + / ; . $ _ ( ), not starting with -, got {name:?}"
        ));
    }
    Ok(())
}

/// The longest reply line read (replies are short; a job's body is read by length).
const MAX_LINE: usize = 1024;

/// One connection to beanstalkd.
pub struct Client {
    stream: BufReader<TcpStream>,
    addr: String,
    timeout: Duration,
}

impl Client {
    /// Connect to `addr` (`host:port`); `timeout` bounds the connection and every answer.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Client, BeanstalkdError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(BeanstalkdError::Connect {
                    addr: addr.into(),
                    msg: e.to_string(),
                })
            }
            Err(_) => {
                return Err(BeanstalkdError::Connect {
                    addr: addr.into(),
                    msg: format!("timed out after {timeout:?}"),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream: BufReader::new(stream),
            addr: addr.into(),
            timeout,
        })
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn io(&self, e: std::io::Error) -> BeanstalkdError {
        BeanstalkdError::Io {
            addr: self.addr.clone(),
            msg: e.to_string(),
        }
    }

    /// Send `command` (+ `body`), read the reply line (without CRLF).
    async fn call(
        &mut self,
        command: &str,
        body: Option<&[u8]>,
        limit: Duration,
    ) -> Result<String, BeanstalkdError> {
        let name = command.split(' ').next().unwrap_or(command).to_string();
        let mut out = Vec::with_capacity(command.len() + 4 + body.map_or(0, |b| b.len() + 2));
        out.extend_from_slice(command.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(b) = body {
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            self.stream.get_mut().write_all(&out).await?;
            let mut line = Vec::new();
            (&mut self.stream)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await?;
            Ok::<_, std::io::Error>(line)
        };
        let line = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(self.io(e)),
            Err(_) => {
                return Err(BeanstalkdError::Timeout {
                    addr: self.addr.clone(),
                    command: name,
                    limit,
                })
            }
        };
        if line.is_empty() {
            return Err(BeanstalkdError::Io {
                addr: self.addr.clone(),
                msg: "connection closed by beanstalkd".into(),
            });
        }
        let Some(text) = line.strip_suffix(b"\r\n") else {
            return Err(BeanstalkdError::Protocol {
                addr: self.addr.clone(),
                command: name,
                reply: String::from_utf8_lossy(&line).into_owned(),
            });
        };
        let reply = String::from_utf8_lossy(text).into_owned();
        const ERRORS: [&str; 9] = [
            "OUT_OF_MEMORY",
            "INTERNAL_ERROR",
            "BAD_FORMAT",
            "UNKNOWN_COMMAND",
            "EXPECTED_CRLF",
            "JOB_TOO_BIG",
            "DRAINING",
            "DEADLINE_SOON",
            "NOT_IGNORED",
        ];
        if ERRORS.contains(&reply.as_str()) {
            return Err(BeanstalkdError::Refused {
                addr: self.addr.clone(),
                command: name,
                reply,
            });
        }
        Ok(reply)
    }

    fn unexpected(&self, command: &str, reply: String) -> BeanstalkdError {
        BeanstalkdError::Protocol {
            addr: self.addr.clone(),
            command: command.into(),
            reply,
        }
    }

    /// `use <tube>`: where the next puts go.
    pub async fn use_tube(&mut self, tube: &str) -> Result<(), BeanstalkdError> {
        let r = self
            .call(&format!("use {tube}"), None, self.timeout)
            .await?;
        if r == format!("USING {tube}") {
            Ok(())
        } else {
            Err(self.unexpected("use", r))
        }
    }

    /// `put <pri> 0 <ttr> <bytes>`: store a job in the used tube.
    pub async fn put(&mut self, pri: u32, ttr: u32, body: &[u8]) -> Result<Put, BeanstalkdError> {
        let r = self
            .call(
                &format!("put {pri} 0 {ttr} {}", body.len()),
                Some(body),
                self.timeout,
            )
            .await?;
        let id = |s: &str| s.parse::<u64>().ok();
        match r.split_once(' ') {
            Some(("INSERTED", n)) if id(n).is_some() => Ok(Put::Inserted(id(n).unwrap())),
            Some(("BURIED", n)) if id(n).is_some() => Ok(Put::Buried(id(n).unwrap())),
            _ => Err(self.unexpected("put", r)),
        }
    }

    /// `watch <tube>`: reserve from it too.
    pub async fn watch(&mut self, tube: &str) -> Result<(), BeanstalkdError> {
        let r = self
            .call(&format!("watch {tube}"), None, self.timeout)
            .await?;
        if r.starts_with("WATCHING ") {
            Ok(())
        } else {
            Err(self.unexpected("watch", r))
        }
    }

    /// `ignore <tube>`: stop reserving from it.
    pub async fn ignore(&mut self, tube: &str) -> Result<(), BeanstalkdError> {
        let r = self
            .call(&format!("ignore {tube}"), None, self.timeout)
            .await?;
        if r.starts_with("WATCHING ") {
            Ok(())
        } else {
            Err(self.unexpected("ignore", r))
        }
    }

    /// `reserve-with-timeout <secs>`: the next ready job of the watched tubes, or None when
    /// none came within `secs`.
    pub async fn reserve(&mut self, secs: u32) -> Result<Option<Job>, BeanstalkdError> {
        let limit = self.timeout + Duration::from_secs(secs.into());
        let r = self
            .call(&format!("reserve-with-timeout {secs}"), None, limit)
            .await?;
        if r == "TIMED_OUT" {
            return Ok(None);
        }
        let mut parts = r.split(' ');
        let (Some("RESERVED"), Some(id), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(self.unexpected("reserve-with-timeout", r));
        };
        let (Ok(id), Ok(len)) = (id.parse::<u64>(), len.parse::<usize>()) else {
            return Err(self.unexpected("reserve-with-timeout", r));
        };
        let mut body = vec![0; len + 2];
        match tokio::time::timeout(self.timeout, self.stream.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(self.io(e)),
            Err(_) => {
                return Err(BeanstalkdError::Timeout {
                    addr: self.addr.clone(),
                    command: "reserve-with-timeout".into(),
                    limit: self.timeout,
                })
            }
        }
        if !body.ends_with(b"\r\n") {
            return Err(self.unexpected("reserve-with-timeout", "job without CRLF".into()));
        }
        body.truncate(len);
        Ok(Some(Job { id, body }))
    }

    /// `delete <id>`; false when beanstalkd has no such job (`NOT_FOUND`).
    pub async fn delete(&mut self, id: u64) -> Result<bool, BeanstalkdError> {
        let r = self
            .call(&format!("delete {id}"), None, self.timeout)
            .await?;
        match r.as_str() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            _ => Err(self.unexpected("delete", r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tube_names() {
        for ok in ["duffy", "duffy-events", "a.b_c(1)$;+/", &"t".repeat(200)] {
            assert!(check_tube(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "with space", "é", "a\r\nput", &"t".repeat(201)] {
            assert!(check_tube(bad).is_err(), "{bad:?}");
        }
    }
}
