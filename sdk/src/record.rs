//! [`Record`]: one output row as a JSON object, built without a JSON library.

use std::fmt::Write;

/// One output row, encoded as a JSON object.
///
/// ```ignore
/// let row = Record::new().str("word", "grid").int("count", 3);
/// ```
#[derive(Debug, Clone)]
pub struct Record {
    json: String,
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Record { json: String::from("{") }
    }

    /// Adds a string field.
    pub fn str(mut self, name: &str, value: &str) -> Self {
        self.key(name);
        quote(&mut self.json, value);
        self
    }

    /// Adds an integer field.
    pub fn int(mut self, name: &str, value: i64) -> Self {
        self.key(name);
        let _ = write!(self.json, "{value}");
        self
    }

    /// Adds a float field; NaN and infinities become `null`, as JSON has no spelling for them.
    pub fn float(mut self, name: &str, value: f64) -> Self {
        self.key(name);
        if value.is_finite() {
            let _ = write!(self.json, "{value:?}");
        } else {
            self.json.push_str("null");
        }
        self
    }

    /// Adds a boolean field.
    pub fn bool(mut self, name: &str, value: bool) -> Self {
        self.key(name);
        self.json.push_str(if value { "true" } else { "false" });
        self
    }

    /// Adds a null field.
    pub fn null(mut self, name: &str) -> Self {
        self.key(name);
        self.json.push_str("null");
        self
    }

    /// The record as UTF-8 JSON.
    pub fn into_bytes(mut self) -> Vec<u8> {
        self.json.push('}');
        self.json.into_bytes()
    }

    fn key(&mut self, name: &str) {
        if self.json.len() > 1 {
            self.json.push(',');
        }
        quote(&mut self.json, name);
        self.json.push(':');
    }
}

fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_and_escapes_strings() {
        let r = Record::new()
            .str("word", "a\"b\\c\n\u{1}")
            .int("count", -3)
            .float("p", 0.5)
            .float("bad", f64::NAN)
            .bool("ok", true)
            .null("none");
        assert_eq!(
            String::from_utf8(r.into_bytes()).unwrap_or_default(),
            r#"{"word":"a\"b\\c\n\u0001","count":-3,"p":0.5,"bad":null,"ok":true,"none":null}"#
        );
    }

    #[test]
    fn empty_record_is_an_empty_object() {
        assert_eq!(Record::new().into_bytes(), b"{}");
    }
}
