//! RFC 9457 problem details: the single error body both binaries send.

use serde::Serialize;
use serde_json::{Map, Value};

/// The media type of every error response.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// One problem+json body. `extensions` are extra members flattened beside the standard ones.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// A URI reference naming the problem type, e.g. `/problems/invalid-field`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short, human-readable summary of the problem type.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence; names the field at fault for bad input.
    pub detail: String,
    /// Additional members (e.g. `field`, `checks`).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    /// A problem without extension members.
    pub fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            title,
            status,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds one extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// The serialized body. Serializing these plain fields cannot fail; an empty object is the fallback.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_standard_members_then_extensions() {
        let p = Problem::new(
            422,
            "/problems/invalid-field",
            "Invalid field",
            "name: must not be empty",
        )
        .with("field", "name");
        let v: Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"/problems/invalid-field","title":"Invalid field","status":422,
                "detail":"name: must not be empty","field":"name"})
        );
    }
}
