//! Request body validation with Python jsonschema's wording, as Trove reports it:
//! `Validation error: <path> <message>; <path> <message>`, the path written `module['apply_order']`.
//!
//! Trove validates with JSON schemas; clients parse only the text, so we check the same constraints
//! directly and word the failures the same way.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Collects failures for one body.
#[derive(Default)]
pub struct Checker {
    errors: Vec<String>,
}

/// Python's repr of a JSON value (`'x'`, `True`, `None`, `10`).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => {
            format!(
                "{{{}}}",
                o.iter()
                    .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    }
}

/// `module['datastore']['type']` from `["module", "datastore", "type"]`.
pub fn py_path(parts: &[&str]) -> String {
    let mut s = parts.first().map(|p| (*p).to_owned()).unwrap_or_default();
    for p in &parts[1.min(parts.len())..] {
        if p.parse::<usize>().is_ok() {
            s.push_str(&format!("[{p}]"));
        } else {
            s.push_str(&format!("['{p}']"));
        }
    }
    s
}

fn has_alnum(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_alphanumeric())
}

/// The pattern Trove's `non_empty_string` uses.
pub const NON_EMPTY_PATTERN: &str = "^.*[0-9a-zA-Z]+.*$";
/// The uuid pattern of Trove's schemas.
pub const UUID_PATTERN: &str =
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$";

impl Checker {
    pub fn fail(&mut self, path: &[&str], msg: impl AsRef<str>) {
        let p = py_path(path);
        if p.is_empty() {
            self.errors.push(msg.as_ref().to_owned());
        } else {
            self.errors.push(format!("{p} {}", msg.as_ref()));
        }
    }

    /// `'<key>' is a required property` when `key` is missing from `obj`.
    pub fn required(&mut self, obj: &Map<String, Value>, path: &[&str], key: &str) -> bool {
        if obj.contains_key(key) {
            true
        } else {
            self.fail(path, format!("'{key}' is a required property"));
            false
        }
    }

    /// The object at `obj[key]` (an error when it is another type).
    pub fn object<'a>(&mut self, v: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            other => {
                self.fail(path, format!("{} is not of type 'object'", py_repr(other)));
                None
            }
        }
    }

    /// A non-empty string of at most `max` characters with a letter or digit.
    pub fn name_like(&mut self, v: &Value, path: &[&str], max: usize) {
        match v {
            Value::String(s) if s.is_empty() => {
                self.fail(path, format!("{} is too short", py_repr(v)))
            }
            Value::String(s) if s.chars().count() > max => {
                self.fail(path, format!("{} is too long", py_repr(v)))
            }
            Value::String(s) if !has_alnum(s) => self.fail(
                path,
                format!("{} does not match '{NON_EMPTY_PATTERN}'", py_repr(v)),
            ),
            Value::String(_) => {}
            other => self.fail(path, format!("{} is not of type 'string'", py_repr(other))),
        }
    }

    /// A string of at least one character.
    pub fn non_empty_string(&mut self, v: &Value, path: &[&str]) {
        match v {
            Value::String(s) if s.is_empty() => {
                self.fail(path, format!("{} is too short", py_repr(v)))
            }
            Value::String(_) => {}
            other => self.fail(path, format!("{} is not of type 'string'", py_repr(other))),
        }
    }

    /// An integer in `min..=max` (JSON booleans are not integers, as in jsonschema).
    pub fn int_range(&mut self, v: &Value, path: &[&str], min: i64, max: i64) {
        match v.as_i64() {
            Some(n) if v.is_number() && n > max => {
                self.fail(path, format!("{n} is greater than the maximum of {max}"))
            }
            Some(n) if v.is_number() && n < min => {
                self.fail(path, format!("{n} is less than the minimum of {min}"))
            }
            Some(_) if v.is_number() => {}
            _ => self.fail(path, format!("{} is not of type 'integer'", py_repr(v))),
        }
    }

    /// Keys of `obj` not in `allowed`.
    pub fn no_extra(&mut self, obj: &Map<String, Value>, path: &[&str], allowed: &[&str]) {
        let extra: Vec<String> = obj
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| format!("'{k}'"))
            .collect();
        match extra.len() {
            0 => {}
            1 => self.fail(
                path,
                format!(
                    "Additional properties are not allowed ({} was unexpected)",
                    extra[0]
                ),
            ),
            _ => self.fail(
                path,
                format!(
                    "Additional properties are not allowed ({} were unexpected)",
                    extra.join(", ")
                ),
            ),
        }
    }

    /// `Validation error: ...` when anything failed.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::bad(format!(
                "Validation error: {}",
                self.errors.join("; ")
            )))
        }
    }
}

/// The root of a body must be an object holding `key`.
pub fn root<'a>(body: &'a Value, key: &str) -> Result<&'a Map<String, Value>, ApiError> {
    match body.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(other) => Err(ApiError::bad(format!(
            "Validation error: {key} {} is not of type 'object'",
            py_repr(other)
        ))),
        None => Err(ApiError::bad(format!(
            "Validation error: '{key}' is a required property"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_read_like_python_jsonschema() {
        let mut c = Checker::default();
        c.int_range(&json!(10), &["module", "apply_order"], 0, 9);
        c.int_range(&json!(true), &["module", "auto_apply"], 0, 1);
        c.required(&Map::new(), &["module"], "contents");
        let e = c.finish().unwrap_err().to_string();
        assert_eq!(
            e,
            "Validation error: module['apply_order'] 10 is greater than the maximum of 9; \
             module['auto_apply'] True is not of type 'integer'; module 'contents' is a required property"
        );
    }

    #[test]
    fn paths_and_reprs() {
        assert_eq!(py_path(&["modules", "0", "id"]), "modules[0]['id']");
        assert_eq!(py_repr(&json!("abc")), "'abc'");
        assert_eq!(py_repr(&json!(null)), "None");
        assert!(root(&json!({}), "module")
            .unwrap_err()
            .to_string()
            .contains("'module' is a required property"));
    }
}
