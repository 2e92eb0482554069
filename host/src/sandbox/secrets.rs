//! The secrets one step may read, and their redaction from everything the
//! step leaves behind.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use memchr::memmem;

/// What a redacted secret reads as.
pub const REDACTED: &str = "[redacted]";

/// Named secret values granted to one step (its `secrets:` in a workflow).
///
/// The step reads them through the `secret` host import; nothing else can.
/// Whatever the step leaves behind (its output, its error message, its log,
/// the state it writes, the input of its child calls) has every occurrence
/// of a value, raw or as escaped inside a JSON string, replaced by
/// [`REDACTED`] before it reaches the journal, a log or a report. `Debug`
/// shows the names only.
///
/// # Examples
///
/// ```
/// use stepbox::sandbox::Secrets;
///
/// let secrets = Secrets::new([("API_TOKEN", "s3cr3t-t0ken")]);
/// assert_eq!(secrets.get("API_TOKEN"), Some("s3cr3t-t0ken"));
/// assert_eq!(secrets.redact("Bearer s3cr3t-t0ken"), "Bearer [redacted]");
/// assert_eq!(format!("{secrets:?}"), r#"Secrets(["API_TOKEN"])"#);
/// ```
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<[(Arc<str>, Arc<str>)]>,
    /// The byte strings to redact, longest first, so a secret that contains
    /// another is replaced whole.
    patterns: Arc<[Vec<u8>]>,
}

impl Secrets {
    /// Secrets from `(name, value)` pairs.
    pub fn new<N: Into<Arc<str>>, V: Into<Arc<str>>>(pairs: impl IntoIterator<Item = (N, V)>) -> Secrets {
        let values: Arc<[(Arc<str>, Arc<str>)]> =
            pairs.into_iter().map(|(n, v)| (n.into(), v.into())).collect();
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for (_, value) in values.iter().filter(|(_, v)| !v.is_empty()) {
            patterns.push(value.as_bytes().to_vec());
            let quoted = serde_json::to_string(&**value).expect("a string serializes");
            let escaped = &quoted[1..quoted.len() - 1];
            if escaped != &**value {
                patterns.push(escaped.as_bytes().to_vec());
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        Secrets {
            values,
            patterns: patterns.into(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of secret `name`, if granted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    /// The names of the secrets, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| &**n)
    }

    /// The secrets named in `names`, taken from these, else (when `env`)
    /// from the environment variable of the same name.
    ///
    /// # Errors
    ///
    /// The first name found in neither.
    pub fn select<'n>(&self, names: &'n [Arc<str>], env: bool) -> Result<Secrets, &'n str> {
        let mut chosen = Vec::with_capacity(names.len());
        for name in names {
            let value: Arc<str> = match self.values.iter().find(|(n, _)| n == name) {
                Some((_, value)) => Arc::clone(value),
                None if env => std::env::var(&**name).map_err(|_| &**name)?.into(),
                None => return Err(name),
            };
            chosen.push((Arc::clone(name), value));
        }
        Ok(Secrets::new(chosen))
    }

    /// `text` with every secret value replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Replacing whole UTF-8 sequences by ASCII keeps the text UTF-8;
            // lossy decoding is only a guard.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// `bytes` with every secret value replaced by [`REDACTED`].
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut text = Cow::Borrowed(bytes);
        for pattern in self.patterns.iter() {
            if memmem::find(&text, pattern).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(text.len());
            let mut rest: &[u8] = &text;
            while let Some(at) = memmem::find(rest, pattern) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(REDACTED.as_bytes());
                rest = &rest[at + pattern.len()..];
            }
            out.extend_from_slice(rest);
            text = Cow::Owned(out);
        }
        text
    }

    /// Redacts `text` in place.
    pub(crate) fn scrub(&self, text: &mut String) {
        if let Cow::Owned(clean) = self.redact(text) {
            *text = clean;
        }
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Secrets")
            .field(&self.names().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_redacted_and_other_text_is_kept() {
        let s = Secrets::new([("A", "abc123"), ("B", "zz")]);
        assert_eq!(
            s.redact("x abc123 y abc123zz"),
            "x [redacted] y [redacted][redacted]"
        );
        assert!(matches!(s.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_escaped_inside_json_is_redacted_too() {
        let s = Secrets::new([("Q", "pa\"ss\\word")]);
        let json = serde_json::json!({ "echo": "pa\"ss\\word" }).to_string();
        assert_eq!(s.redact(&json), r#"{"echo":"[redacted]"}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&s.redact(&json)).is_ok());
    }

    #[test]
    fn a_secret_containing_another_is_replaced_whole() {
        let s = Secrets::new([("SHORT", "key"), ("LONG", "monkey-key")]);
        assert_eq!(s.redact("monkey-key"), "[redacted]");
    }

    #[test]
    fn empty_values_redact_nothing() {
        let s = Secrets::new([("E", "")]);
        assert_eq!(s.redact("abc"), "abc");
        assert_eq!(s.get("E"), Some(""));
    }
}
