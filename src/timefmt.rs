//! Timestamps as upstream shows them. The database holds naive UTC.
//! * wire (API 3.4, `duffy client`): `2026-11-25T17:06:21.592900Z`, no fraction when whole seconds;
//! * admin CLI (Python `str(datetime)` with tz): `2026-11-25 17:06:00.554118+00:00`.

use chrono::{NaiveDateTime, Timelike};

/// ISO 8601 UTC with `Z` (upstream 3.4 wire format).
pub fn iso_z(t: &NaiveDateTime) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    } else {
        format!(
            "{}.{:06}Z",
            t.format("%Y-%m-%dT%H:%M:%S"),
            t.nanosecond() / 1000
        )
    }
}

/// Python's `str()` of an aware UTC datetime.
pub fn python(t: &NaiveDateTime) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
    } else {
        format!(
            "{}.{:06}+00:00",
            t.format("%Y-%m-%d %H:%M:%S"),
            t.nanosecond() / 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = NaiveDateTime::parse_from_str("2026-11-25 17:06:21.5929", "%Y-%m-%d %H:%M:%S%.f")
            .unwrap();
        assert_eq!(iso_z(&t), "2026-11-25T17:06:21.592900Z");
        assert_eq!(python(&t), "2026-11-25 17:06:21.592900+00:00");
        let w = NaiveDateTime::parse_from_str("2030-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(iso_z(&w), "2030-01-01T00:00:00Z");
        assert_eq!(python(&w), "2030-01-01 00:00:00+00:00");
    }
}
