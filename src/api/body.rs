//! Request-body validation producing FastAPI-style 422 items (`loc`, `msg`, `type`, `input`).
//! Unknown keys are ignored and explicit `null` means "not set", as upstream does.

use serde_json::{json, Map, Value};

use super::http::{not_an_object, validation_item, ApiError};
use super::lax::{lax_bool, lax_int};

/// Collects validation errors for one body.
pub struct Body<'a> {
    pub obj: &'a Map<String, Value>,
    pub errors: Vec<Value>,
}

impl<'a> Body<'a> {
    /// The body must be a JSON object.
    pub fn new(v: &'a Value) -> Result<Body<'a>, ApiError> {
        match v {
            Value::Object(obj) => Ok(Body {
                obj,
                errors: vec![],
            }),
            other => Err(not_an_object(other.clone())),
        }
    }

    fn loc(path: &[Value]) -> Value {
        let mut l = vec![json!("body")];
        l.extend(path.iter().cloned());
        Value::Array(l)
    }

    pub fn err(&mut self, kind: &str, path: &[Value], msg: &str, input: Value) {
        self.errors
            .push(validation_item(kind, Self::loc(path), msg, input));
    }

    pub fn has(&self, key: &str) -> bool {
        self.obj.contains_key(key)
    }

    /// A value that is present and not null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub fn missing(&mut self, key: &str) {
        let input = Value::Object(self.obj.clone());
        self.err("missing", &[json!(key)], "Field required", input);
    }

    pub fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match self.get(key) {
            None => {
                if required {
                    self.missing(key);
                }
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(
                    "string_type",
                    &[json!(key)],
                    "Input should be a valid string",
                    other.clone(),
                );
                None
            }
        }
    }

    /// A boolean, leniently like Pydantic: `true`/`false`, 0/1, and strings such as
    /// `"yes"`, `"off"`, `"1"`.
    pub fn boolean(&mut self, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match lax_bool(v) {
            Ok(b) => Some(b),
            Err((kind, msg)) => {
                self.err(kind, &[json!(key)], msg, v.clone());
                None
            }
        }
    }

    /// An integer, leniently like Pydantic (see [`lax_int`]).
    pub fn int(&mut self, key: &str) -> Option<i64> {
        let v = self.get(key)?;
        match lax_int(v) {
            Ok(n) => Some(n),
            Err((kind, msg)) => {
                self.err(kind, &[json!(key)], msg, v.clone());
                None
            }
        }
    }

    /// Finish: Err(422) if anything was wrong.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}
