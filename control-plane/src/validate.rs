//! Field rules shared by several routes, each stated once so the handler and the OpenAPI document
//! (`routes::openapi`) say the same thing.

use crate::error::{ApiError, ApiResult};

/// A display label (an org's or a key's name): 1 to `max` characters, no control characters, no leading or
/// trailing whitespace. Taken as sent — never trimmed — so that what is stored is what the client sees.
pub fn label<'a>(field: &'static str, value: &'a str, max: usize) -> ApiResult<&'a str> {
    let count = value.chars().count();
    let edge_space = value.starts_with(is_space) || value.ends_with(is_space);
    if count == 0 || count > max || edge_space || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!(
                "must be 1 to {max} characters, without control characters or leading or trailing spaces"
            ),
        ));
    }
    Ok(value)
}

/// Most items one page of a listing holds (`limit`), as in Stripe's lists.
pub const MAX_PAGE: u8 = 100;

/// A listing's `limit`: 1 to [`MAX_PAGE`], `default` when absent.
pub fn page_limit(limit: Option<u8>, default: u8) -> ApiResult<u8> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

/// The JSON Schema `pattern` of [`label`] (lengths are stated with `minLength`/`maxLength`).
pub const LABEL_PATTERN: &str =
    r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$";

/// Whitespace as ECMA-262's `\s` knows it (what the document's pattern means): Unicode white space plus U+FEFF.
fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// A `request_id`: 1 to 200 characters without control characters.
pub fn request_id(value: &str) -> ApiResult<&str> {
    if value.is_empty() || value.chars().count() > 200 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "request_id",
            "must be 1 to 200 characters, without control characters",
        ));
    }
    Ok(value)
}

/// The JSON Schema `pattern` of [`request_id`].
pub const REQUEST_ID_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]{1,200}$";

/// A Clerk user id: 1 to 200 ASCII letters, digits, `_` or `-`.
pub fn user_id<'a>(field: &'static str, value: &'a str) -> ApiResult<&'a str> {
    let ok = (1..=200).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            field,
            "must be a Clerk user id such as user_2xYz",
        ))
    }
}

/// The JSON Schema `pattern` of [`user_id`].
pub const USER_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,200}$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_taken_as_sent() {
        assert!(label("name", "Acme Inc.", 200).is_ok());
        assert!(label("name", "a", 1).is_ok());
        for bad in ["", " Acme", "Acme ", "  ", "Ac\u{7}me", "ab"] {
            assert!(
                label("name", bad, if bad == "ab" { 1 } else { 200 }).is_err(),
                "{bad:?}"
            );
        }
    }
}
