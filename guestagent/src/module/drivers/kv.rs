//! The `key=value` contents format shared by the built-in drivers.
//!
//! This is Trove's `KeyValueCodec` as the `ping` and `new_relic_license` drivers use it
//! (docs/module-semantics.md §15): lines split on `\n`, trimmed, blank and `#` lines skipped, each line split
//! at its first `=`, the key trimmed but the value not, `true`/`false` (any case) read as booleans and
//! anything else cut at its first `#`.
//!
//! Values can be secrets (licence keys), so errors name line numbers, never line text.

use std::fmt;

/// One parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `true` or `false` in any case, with nothing else on the value side.
    Bool(bool),
    /// Any other value, untrimmed, with everything from the first `#` removed.
    Text(String),
}

impl Value {
    /// Python's truth value of the parsed value: Trove tests values with `if value:`, so `false` and
    /// the empty string count as missing.
    pub fn is_truthy(&self) -> bool {
        match self {
            Self::Bool(b) => *b,
            Self::Text(s) => !s.is_empty(),
        }
    }
}

impl fmt::Display for Value {
    /// Booleans print as Python's `str(bool)` does (`True`/`False`), because that is what a Trove
    /// guest would put in a message built from one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(true) => f.write_str("True"),
            Self::Bool(false) => f.write_str("False"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// Parsed contents: the keys in order of first appearance, each with its last value.
///
/// The order matters because lookups ignore case and take the first match, as Trove's drivers do when
/// they walk a Python dict (which keeps first-insertion order even when a later line overwrites a value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValues {
    entries: Vec<(String, Value)>,
}

impl KeyValues {
    /// The value of the first key equal to `key` ignoring ASCII case.
    pub fn get_ignore_case(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// The number of distinct keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key was found.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order of first appearance.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn insert(&mut self, key: String, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((key, value)),
        }
    }
}

/// Why contents could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// The bytes are not UTF-8 text.
    #[error("contents are not valid UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// A non-blank, non-comment line has no `=`.
    #[error("line {line} has no '=' delimiter")]
    MissingDelimiter {
        /// 1-based line number in the contents.
        line: usize,
    },
}

/// Parses `key=value` contents (docs/module-semantics.md §15).
pub fn parse(bytes: &[u8]) -> Result<KeyValues, KvError> {
    let text = std::str::from_utf8(bytes)?;
    let mut out = KeyValues::default();
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(KvError::MissingDelimiter { line: index + 1 })?;
        let value = if value.eq_ignore_ascii_case("true") {
            Value::Bool(true)
        } else if value.eq_ignore_ascii_case("false") {
            Value::Bool(false)
        } else {
            let cut = value.find('#').unwrap_or(value.len());
            Value::Text(value[..cut].to_owned())
        };
        out.insert(key.trim().to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn simple_pair() {
        let kv = parse(b"message=Module.V1\n").unwrap();
        assert_eq!(kv.len(), 1);
        assert_eq!(kv.get_ignore_case("message"), Some(&text("Module.V1")));
    }

    #[test]
    fn key_is_trimmed_but_value_is_not() {
        let kv = parse(b"  message = Hi  \n").unwrap();
        // The line is trimmed first, so trailing spaces go, but the space after `=` stays.
        assert_eq!(kv.get_ignore_case("message"), Some(&text(" Hi")));
        assert_eq!(kv.iter().next().unwrap().0, "message");
    }

    #[test]
    fn blank_and_comment_lines_are_skipped() {
        let kv = parse(b"\n   \n# message=no\n  #x\nmessage=yes\n").unwrap();
        assert_eq!(kv.len(), 1);
        assert_eq!(kv.get_ignore_case("message"), Some(&text("yes")));
    }

    #[test]
    fn trailing_comment_is_cut() {
        let kv = parse(b"message=Hello # greet\nother=a#b#c").unwrap();
        assert_eq!(kv.get_ignore_case("message"), Some(&text("Hello ")));
        assert_eq!(kv.get_ignore_case("other"), Some(&text("a")));
    }

    #[test]
    fn booleans_in_any_case() {
        let kv = parse(b"a=true\nb=FALSE\nc=TrUe\nd= true\ne=true # x").unwrap();
        assert_eq!(kv.get_ignore_case("a"), Some(&Value::Bool(true)));
        assert_eq!(kv.get_ignore_case("b"), Some(&Value::Bool(false)));
        assert_eq!(kv.get_ignore_case("c"), Some(&Value::Bool(true)));
        // Only an exact `true`/`false` value side is a boolean.
        assert_eq!(kv.get_ignore_case("d"), Some(&text(" true")));
        assert_eq!(kv.get_ignore_case("e"), Some(&text("true ")));
        assert_eq!(Value::Bool(true).to_string(), "True");
        assert!(!Value::Bool(false).is_truthy());
        assert!(!text("").is_truthy());
        assert!(text("x").is_truthy());
    }

    #[test]
    fn split_at_first_equals_only() {
        let kv = parse(b"k=a=b").unwrap();
        assert_eq!(kv.get_ignore_case("k"), Some(&text("a=b")));
    }

    #[test]
    fn later_duplicates_overwrite_in_place() {
        let kv = parse(b"Message=first\nmessage=x\nMessage=second").unwrap();
        assert_eq!(kv.len(), 2);
        // `Message` was inserted first, so a case-insensitive lookup finds it, with its last value.
        assert_eq!(kv.get_ignore_case("MESSAGE"), Some(&text("second")));
    }

    #[test]
    fn crlf_lines_are_trimmed() {
        let kv = parse(b"message=Hi\r\nx=y\r\n").unwrap();
        assert_eq!(kv.get_ignore_case("message"), Some(&text("Hi")));
    }

    #[test]
    fn line_without_delimiter_is_an_error() {
        let err = parse(b"# c\nmessage=ok\nsecret-stuff\n").unwrap_err();
        assert_eq!(err, KvError::MissingDelimiter { line: 3 });
        // The message names the line, not its text.
        assert_eq!(err.to_string(), "line 3 has no '=' delimiter");
    }

    #[test]
    fn non_utf8_is_an_error() {
        let err = parse(b"message=\xff\xfe").unwrap_err();
        assert!(matches!(err, KvError::NotUtf8(_)));
        assert!(err.to_string().starts_with("contents are not valid UTF-8"));
    }
}
