//! Pydantic's lax mode for JSON values (bodies, path segments): integers (`lax_int`) and booleans
//! (`lax_bool`), with Pydantic's error `type` and `msg` for the 422 items. Strings are read by
//! [`crate::lax`], the rules the config and the legacy API's query strings use too.

use serde_json::Value;

/// A validation failure: (`type`, `msg`) as Pydantic reports it.
pub type LaxError = (&'static str, &'static str);

/// An integer as Pydantic's lax mode reads it: JSON integers, whole floats, booleans and
/// numeric strings (`" 3 "`, `"+4"`, `"1_000"`). Integers beyond the `i64` range saturate
/// (callers bound them further).
pub fn lax_int(v: &Value) -> Result<i64, LaxError> {
    const PARSING: LaxError = (
        "int_parsing",
        "Input should be a valid integer, unable to parse string as an integer",
    );
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.as_u64().is_some() {
                Ok(i64::MAX)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.fract() == 0.0 {
                    Ok(f as i64) // `as` saturates
                } else {
                    Err((
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                    ))
                }
            }
        }
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::String(s) => crate::lax::int_str(s).ok_or(PARSING),
        _ => Err(("int_type", "Input should be a valid integer")),
    }
}

/// A boolean as Pydantic's lax mode reads it: JSON booleans, the numbers 0 and 1, and the
/// strings `0/1, false/true, f/t, no/yes, n/y, off/on` (any case).
pub fn lax_bool(v: &Value) -> Result<bool, LaxError> {
    const PARSING: LaxError = (
        "bool_parsing",
        "Input should be a valid boolean, unable to interpret input",
    );
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(PARSING),
        },
        Value::String(s) => crate::lax::bool_str(s).ok_or(PARSING),
        _ => Err(("bool_type", "Input should be a valid boolean")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lax_int_like_pydantic() {
        for (v, want) in [
            (json!(2), Some(2)),
            (json!(2.0), Some(2)),
            (json!(true), Some(1)),
            (json!("2"), Some(2)),
            (json!(" 3 "), Some(3)),
            (json!("+4"), Some(4)),
            (json!("-5"), Some(-5)),
            (json!("1_000"), Some(1000)),
            // a query string and a JSON string are one parser (pydantic-core's `str_as_int`)
            (json!("1.0"), Some(1)),
            (json!(" 7.00 "), Some(7)),
            (json!(10_000_000_000_000_000_000u64), Some(i64::MAX)),
            (json!(1e30), Some(i64::MAX)),
            (json!(2.5), None),
            (json!("abc"), None),
            (json!("1e3"), None),
            (json!("_1"), None),
            (json!("1__0"), None),
            (json!(""), None),
            (json!(null), None),
            (json!([1]), None),
        ] {
            assert_eq!(lax_int(&v).ok(), want, "{v}");
        }
    }

    #[test]
    fn lax_bool_like_pydantic() {
        for (v, want) in [
            (json!(true), Some(true)),
            (json!(0), Some(false)),
            (json!(1.0), Some(true)),
            (json!("yes"), Some(true)),
            (json!("OFF"), Some(false)),
            (json!("t"), Some(true)),
            (json!(2), None),
            (json!("x"), None),
            (json!([]), None),
        ] {
            assert_eq!(lax_bool(&v).ok(), want, "{v}");
        }
    }
}
