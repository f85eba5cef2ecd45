//! Scopes: `source:`, `source:prefix/` or `source:exact/key`, the unit of access that token
//! claims, `[projects]` and SAML role rules name.
//!
//! A leaf: config parses scopes with it at load, identity and the pipeline match keys with it.
//! It knows nothing of tokens, requests or sources beyond their names.

use std::fmt;

/// What a scope admits within its source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ScopeRule {
    /// `source:`: every key.
    Source,
    /// `source:prefix/`: keys starting with the prefix, which ends with `/` (a segment boundary).
    Prefix(String),
    /// `source:exact/key`: that one key.
    Exact(String),
}

/// `source:`, `source:prefix/` or `source:exact/key`, matched on the decoded key, byte for byte
/// (no case folding, no normalization). Used by token scopes and `[projects]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    source: String,
    rule: ScopeRule,
}

/// Why a scope string is malformed (phrased to follow the scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("has no `:` after the source name")]
    NoSource,
    #[error("has an empty source name")]
    EmptySource,
    #[error("names no key after `exact/`")]
    EmptyExact,
    #[error("is a prefix that does not end with `/`")]
    NotAFolder,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let (source, rest) = text.split_once(':').ok_or(ScopeError::NoSource)?;
        if source.is_empty() || source.contains('/') {
            return Err(ScopeError::EmptySource);
        }
        let rule = if rest.is_empty() {
            ScopeRule::Source
        } else if let Some(key) = rest.strip_prefix("exact/") {
            if key.is_empty() {
                return Err(ScopeError::EmptyExact);
            }
            ScopeRule::Exact(key.to_owned())
        } else if rest.ends_with('/') {
            ScopeRule::Prefix(rest.to_owned())
        } else {
            return Err(ScopeError::NotAFolder);
        };
        Ok(Scope {
            source: source.to_owned(),
            rule,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this scope admits `key` (already decoded) in `source`.
    pub fn admits(&self, source: &str, key: &str) -> bool {
        self.source == source
            && match &self.rule {
                ScopeRule::Source => true,
                // The prefix ends with `/`, so `a/` never admits `ab/...`.
                ScopeRule::Prefix(prefix) => key.starts_with(prefix.as_str()),
                ScopeRule::Exact(exact) => key == exact,
            }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            ScopeRule::Source => write!(f, "{}:", self.source),
            ScopeRule::Prefix(p) => write!(f, "{}:{p}", self.source),
            ScopeRule::Exact(k) => write!(f, "{}:exact/{k}", self.source),
        }
    }
}
