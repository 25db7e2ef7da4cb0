//! **The** reading of loosely typed scalars, as Pydantic 2's lax mode reads strings (upstream
//! validates its API and its config with it): integers, floats and booleans written as text.
//! The API's JSON values (`api::lax`), the legacy API's query strings and upstream's config keys
//! (`config::lax`) all come here, so `"1.0"` means the same everywhere. The expectations in the
//! tests are Pydantic 2.11's answers (`TypeAdapter(int|float|bool).validate_python(str)`).

/// An integer as pydantic 2 parses a string in lax mode : surrounding
/// whitespace, a sign, `_` between digits and a fraction of zeros (`"1.0"`) are accepted.
/// Values beyond `i64` saturate (every consumer rejects them anyway).
pub fn int_str(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let int = match body.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.bytes().all(|c| c == b'0') => i,
        Some(_) => return None,
        None => body,
    };
    if int.is_empty()
        || int.starts_with('_')
        || int.ends_with('_')
        || int.contains("__")
        || !int.bytes().all(|c| c.is_ascii_digit() || c == b'_')
    {
        return None;
    }
    let v = int.bytes().filter(|c| *c != b'_').fold(0i64, |v, c| {
        v.saturating_mul(10).saturating_add(i64::from(c - b'0'))
    });
    Some(if neg { -v } else { v })
}

/// A float as Pydantic reads a string: surrounding whitespace, a sign, `_` between digits,
/// exponents, `inf`/`nan` (Python's `float()` spellings).
pub fn float_str(s: &str) -> Option<f64> {
    let t = s.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'-') | Some(b'+') => (&t[..1], &t[1..]),
        _ => ("", t),
    };
    let lower = rest.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return format!("{sign}{lower}").parse().ok();
    }
    let b = rest.as_bytes();
    let underscores_ok = b.first().is_some_and(u8::is_ascii_digit) || b.first() == Some(&b'.');
    if !underscores_ok && rest.contains('_') {
        return None;
    }
    // `_` only between two digits (Python's rule)
    for (i, c) in b.iter().enumerate() {
        if *c == b'_'
            && !(i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            return None;
        }
    }
    if !rest
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'e' | b'E' | b'-' | b'+'))
    {
        return None;
    }
    format!("{sign}{}", rest.replace('_', "")).parse().ok()
}

/// A boolean as Pydantic reads a string: `0/1, false/true, f/t, no/yes, n/y, off/on`, any case,
/// surrounding whitespace ignored.
pub fn bool_str(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "f" | "false" | "n" | "no" => Some(false),
        "1" | "on" | "t" | "true" | "y" | "yes" => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_like_pydantic() {
        // accepted / rejected as pydantic 2.11 TypeAdapter(int).validate_python(str)
        for (s, v) in [
            ("1", 1),
            (" 1 ", 1),
            ("1.0", 1),
            ("+1", 1),
            ("-1", -1),
            ("1_000", 1000),
            ("00012", 12),
            ("\t2\n", 2),
            ("1.00000", 1),
            ("-0", 0),
            ("1_0.0", 10),
            ("00.00", 0),
            ("\u{a0}1\u{a0}", 1),
            ("99999999999999999999", i64::MAX),
        ] {
            assert_eq!(int_str(s), Some(v), "{s:?}");
        }
        for s in [
            "1.5", "0x10", "１", "1e3", "", "1.", ".0", " ", "1__0", "_1", "1_", "nan", "+-1",
            "1 0", "1.0_0", "1\0", "-", "+", "0.", "1.0.0", "٣",
        ] {
            assert_eq!(int_str(s), None, "{s:?}");
        }
    }

    #[test]
    fn floats_parse_like_pydantic() {
        for (s, v) in [
            ("10", 10.0),
            (" 2.5 ", 2.5),
            ("1e1", 10.0),
            ("1_000.5", 1000.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("-0.1", -0.1),
        ] {
            assert_eq!(float_str(s), Some(v), "{s:?}");
        }
        assert_eq!(float_str("inf"), Some(f64::INFINITY));
        assert!(float_str("nan").is_some_and(f64::is_nan));
        for s in ["", "0x10", "1__0", "_1", "1_", "abc", "1.0.0", "+-1"] {
            assert_eq!(float_str(s), None, "{s:?}");
        }
    }

    #[test]
    fn booleans_parse_like_pydantic() {
        for (s, v) in [("yes", true), (" OFF ", false), ("t", true), ("0", false)] {
            assert_eq!(bool_str(s), Some(v), "{s:?}");
        }
        for s in ["", "2", "x", "yess"] {
            assert_eq!(bool_str(s), None, "{s:?}");
        }
    }
}
