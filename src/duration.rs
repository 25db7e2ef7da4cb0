//! Upstream Duffy's two duration grammars (compat spec §3.1) and Python-style rendering.
//!
//! * **config duration** — config keys, tenant lifetimes, CLI `--session-lifetime*`: optional `+`,
//!   parts `[N w] [N d] [N h] [N m] [N s] [N ms]` in that order, or a bare number of seconds.
//! * **API relative duration** — `PUT /sessions` `expires_at`: sign `+`/`-` required, no bare number.
//!
//! Both are case-insensitive, ignore surrounding whitespace and allow whitespace between parts.
//! [`python_timedelta`] renders a duration the way upstream's admin CLI prints it (`6:00:00`,
//! `1 day, 0:00:00`).

use std::time::Duration;

use thiserror::Error;

/// A duration string that matches neither grammar.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid timedelta format: {0:?}")]
pub struct DurationError(pub String);

const UNITS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parse `[N w] [N d] [N h] [N m] [N s] [N ms]` (no sign) into milliseconds.
fn parse_parts(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut next_unit = 0; // index into UNITS: parts must come in order
    let mut total: u64 = 0;
    let mut any = false;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: u64 = s[start..i].parse().ok()?;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &s[ustart..i];
        let idx = UNITS.iter().position(|(u, _)| *u == unit)?;
        if idx < next_unit {
            return None;
        }
        next_unit = idx + 1;
        total = total.checked_add(n.checked_mul(UNITS[idx].1)?)?;
        any = true;
    }
    any.then_some(total)
}

/// Parse a config duration: `"6h"`, `"1h30m"`, `"+2w3d"`, `"90"` (seconds).
pub fn parse_config_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        let secs: u64 = t.parse().map_err(|_| err())?;
        return Ok(Duration::from_secs(secs));
    }
    if !t.is_empty()
        && t.chars().all(|c| c.is_ascii_digit() || c == '.')
        && t.matches('.').count() == 1
    {
        let secs: f64 = t.parse().map_err(|_| err())?;
        return Duration::try_from_secs_f64(secs).map_err(|_| err());
    }
    parse_parts(t).map(Duration::from_millis).ok_or_else(err)
}

/// Parse an API relative duration (`"+3h"`, `"-20m25s"`) into signed milliseconds.
pub fn parse_relative_duration(s: &str) -> Result<i64, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    let (sign, rest) = if let Some(r) = t.strip_prefix('+') {
        (1i64, r)
    } else if let Some(r) = t.strip_prefix('-') {
        (-1i64, r)
    } else {
        return Err(err());
    };
    let ms = parse_parts(rest).ok_or_else(err)?;
    i64::try_from(ms).map(|v| v * sign).map_err(|_| err())
}

/// Seconds as upstream serialises them on the wire (3.4): an integer when whole, else a float.
pub fn seconds_json(d: Duration) -> serde_json::Value {
    if d.subsec_nanos() == 0 {
        serde_json::Value::from(d.as_secs())
    } else {
        serde_json::Value::from(d.as_secs_f64())
    }
}

/// Render like Python's `str(datetime.timedelta)`: `6:00:00`, `1 day, 0:00:00`, `0:00:00.500000`.
pub fn python_timedelta(d: Duration) -> String {
    let total = d.as_secs();
    let days = total / 86_400;
    let rem = total % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let micros = d.subsec_micros();
    let mut out = String::new();
    if days > 0 {
        out.push_str(&format!("{days} day{}, ", if days == 1 { "" } else { "s" }));
    }
    out.push_str(&format!("{h}:{m:02}:{s:02}"));
    if micros > 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_durations() {
        let ok = [
            ("6h", 6 * 3600),
            ("1h30m", 5400),
            ("2w3d", 17 * 86400),
            ("90", 90),
            ("+1H 30M", 5400),
            (" 5 s ", 5),
            ("1d 2h 3m 4s", 93784),
        ];
        for (s, secs) in ok {
            assert_eq!(
                parse_config_duration(s).unwrap(),
                Duration::from_secs(secs),
                "{s}"
            );
        }
        assert_eq!(
            parse_config_duration("1s500ms").unwrap(),
            Duration::from_millis(1500)
        );
        for bad in ["30m2h", "-1h", "", "h", "1x", "1h1h", "abc", "+", "1.5h"] {
            assert!(parse_config_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn relative_durations() {
        assert_eq!(parse_relative_duration("+3h").unwrap(), 3 * 3_600_000);
        assert_eq!(
            parse_relative_duration("-20m25s").unwrap(),
            -(20 * 60_000 + 25_000)
        );
        for bad in ["3h", "+", "+90", "-30m2h"] {
            assert!(parse_relative_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn python_rendering() {
        assert_eq!(python_timedelta(Duration::from_secs(6 * 3600)), "6:00:00");
        assert_eq!(
            python_timedelta(Duration::from_secs(86400)),
            "1 day, 0:00:00"
        );
        assert_eq!(
            python_timedelta(Duration::from_secs(2 * 86400 + 61)),
            "2 days, 0:01:01"
        );
        assert_eq!(
            python_timedelta(Duration::from_millis(500)),
            "0:00:00.500000"
        );
    }

    #[test]
    fn wire_seconds() {
        assert_eq!(seconds_json(Duration::from_secs(5400)).to_string(), "5400");
        assert_eq!(seconds_json(Duration::from_millis(1500)).to_string(), "1.5");
    }
}
