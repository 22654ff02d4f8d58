//! The request target the proxy prices and forwards: one canonical form, so that no spelling of a path can be
//! priced as one route and served as another.
//!
//! [`canonicalize`] takes the target as received (RFC 9112 §3.2) and returns the origin-form target to price and
//! forward, normalised as RFC 3986 §6.2.2 describes:
//!
//! * percent-encoded unreserved characters are decoded (`%65` → `e`, `%2E` → `.`) and the escapes that remain are
//!   upper-cased (`%c3%a9` → `%C3%A9`); a byte that may not appear raw in a path (a non-ASCII byte, `"`, `{`, …) is
//!   encoded;
//! * dot segments are removed (§5.2.4), encoded ones included, after decoding;
//! * repeated slashes are merged (`//v1//x` → `/v1/x`), a trailing one kept;
//! * an absolute-form target (`http://host/p?q`) becomes its origin form (`/p?q`);
//! * the query string is left as it is.
//!
//! What stays ambiguous after that is refused ([`TargetError`]): an encoded `/` or `\` (servers disagree on whether
//! it separates segments), a raw `\` (some servers take it for `/`), control bytes and NUL, dot segments that climb
//! above the root, a dot segment carrying parameters (`..;`, which Tomcat resolves as `..`), a `%` without two hex
//! digits after it, and any form other than origin-form, `http(s)://` absolute-form and `*` for `OPTIONS`.
//!
//! A target that is already canonical — the common case — is recognised in one pass over its bytes and returned
//! as it was received, without allocating.
//!
//! Route prices are matched against the canonical path with its remaining escapes decoded
//! ([`crate::domain::RouteTable::classify`]), as servers that route on decoded paths (nginx, most frameworks) see
//! it: `%3A` and `:` cost the same.

use std::fmt::Write as _;

/// What one byte of a path is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Byte {
    /// Kept as it is: unreserved, sub-delims, `:` and `@` (RFC 3986 `pchar` without `%`).
    Keep,
    /// `/`.
    Slash,
    /// `%`, the start of an escape.
    Percent,
    /// `\`: refused.
    Backslash,
    /// 0x00–0x1F and 0x7F: refused.
    Control,
    /// Anything else (non-ASCII, space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`, `#`, `?`): encoded.
    Encode,
}

const fn byte_class(b: u8) -> Byte {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Byte::Keep,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => Byte::Keep,
        b':' | b'@' => Byte::Keep,
        b'/' => Byte::Slash,
        b'%' => Byte::Percent,
        b'\\' => Byte::Backslash,
        0x00..=0x1f | 0x7f => Byte::Control,
        _ => Byte::Encode,
    }
}

static CLASS: [Byte; 256] = {
    let mut table = [Byte::Encode; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = byte_class(b as u8);
        b += 1;
    }
    table
};

const fn is_unreserved(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~')
}

const fn is_control(b: u8) -> bool {
    matches!(b, 0x00..=0x1f | 0x7f)
}

/// The value of a hex digit.
const fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte an escape at the start of `bytes` (`%XY`) stands for.
fn escape_at(bytes: &[u8]) -> Option<u8> {
    match bytes {
        [b'%', hi, lo, ..] => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

/// A request target in the form the proxy prices and forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canonical<'a> {
    /// The target as received was canonical: forward it unchanged; this is its path (`*` for `OPTIONS *`).
    AsReceived(&'a str),
    /// The target had to change: forward `target` (origin-form path and query); its first `path_len` bytes are
    /// the path.
    Rewritten {
        /// The canonical origin-form target, path and query.
        target: String,
        /// Where the path ends in `target`.
        path_len: usize,
    },
}

impl Canonical<'_> {
    /// The canonical path, without the query: what routes are matched against.
    pub fn path(&self) -> &str {
        match self {
            Self::AsReceived(path) => path,
            Self::Rewritten { target, path_len } => target.get(..*path_len).unwrap_or(target),
        }
    }

    /// The target to forward instead of the received one, when it differs, owned.
    pub fn into_rewritten(self) -> Option<String> {
        match self {
            Self::AsReceived(_) => None,
            Self::Rewritten { target, .. } => Some(target),
        }
    }

    /// The target to forward instead of the received one, when it differs.
    pub fn rewritten(&self) -> Option<&str> {
        match self {
            Self::AsReceived(_) => None,
            Self::Rewritten { target, .. } => Some(target),
        }
    }
}

/// Why a request target is refused: it stays ambiguous after canonicalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Not origin-form, `http(s)://` absolute-form, or `*` with `OPTIONS`.
    Form,
    /// `%2F` or `%5C` in the path.
    EncodedSeparator,
    /// A raw `\` in the path.
    Backslash,
    /// A control byte or NUL, raw or encoded in the path, raw in the query.
    Control,
    /// A `..` segment with nothing left to remove.
    AboveRoot,
    /// `.;…` or `..;…`: a dot segment with parameters, which some servers resolve as a dot segment.
    DotParameters,
    /// `%` not followed by two hex digits.
    BadEscape,
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for TargetError {}

impl TargetError {
    /// The message, for a response's `detail`.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Form => {
                "request target: must be a path (/…), an http(s):// URL, or * for OPTIONS; other forms are refused"
            }
            Self::EncodedSeparator => {
                "request target: an encoded / or \\ (%2F, %5C) in the path is ambiguous: servers disagree on whether it separates segments"
            }
            Self::Backslash => {
                "request target: a \\ in the path is ambiguous: some servers take it for /"
            }
            Self::Control => {
                "request target: control characters and NUL are not allowed, raw or percent-encoded"
            }
            Self::AboveRoot => "request target: a .. segment climbs above the root",
            Self::DotParameters => {
                "request target: a dot segment with parameters (.; or ..;) is ambiguous"
            }
            Self::BadEscape => "request target: % must be followed by two hex digits",
        }
    }
}

/// The canonical form of the request target `raw` (as received, any form); `options` says whether the method is
/// `OPTIONS` (the only one that may use `*`).
pub fn canonicalize(options: bool, raw: &[u8]) -> Result<Canonical<'_>, TargetError> {
    match raw.first() {
        Some(b'/') => origin_form(raw),
        Some(b'*') if raw.len() == 1 => match options {
            true => Ok(Canonical::AsReceived("*")),
            false => Err(TargetError::Form),
        },
        Some(_) => absolute_form(raw),
        None => Err(TargetError::Form),
    }
}

/// `/path?query`.
fn origin_form(raw: &[u8]) -> Result<Canonical<'_>, TargetError> {
    if let Some(path_end) = canonical_path_end(raw) {
        let (path, query) = raw.split_at(path_end);
        check_query(query)?;
        // Every byte of a canonical path is ASCII.
        return std::str::from_utf8(path)
            .map(Canonical::AsReceived)
            .map_err(|_| TargetError::Form);
    }
    let path_end = memchr(b'?', raw).unwrap_or(raw.len());
    let (path, query) = raw.split_at(path_end);
    check_query(query)?;
    rewrite(path, query)
}

/// `http://authority/path?query` or `https://…`, forwarded in origin form.
fn absolute_form(raw: &[u8]) -> Result<Canonical<'_>, TargetError> {
    let rest = strip_prefix_ignore_case(raw, b"http://")
        .or_else(|| strip_prefix_ignore_case(raw, b"https://"))
        .ok_or(TargetError::Form)?;
    let authority_end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?'))
        .unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    if authority.is_empty() {
        return Err(TargetError::Form);
    }
    if authority.iter().any(|&b| b == b'\\' || is_control(b)) {
        return Err(TargetError::Form);
    }
    let path_end = memchr(b'?', rest).unwrap_or(rest.len());
    let (path, query) = rest.split_at(path_end);
    check_query(query)?;
    // `http://host` and `http://host?q` have the empty path, which origin-form writes as `/`.
    let path: &[u8] = if path.is_empty() { b"/" } else { path };
    rewrite(path, query)
}

fn strip_prefix_ignore_case<'a>(raw: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = raw.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| raw.get(prefix.len()..))
        .flatten()
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// The query is forwarded as it is; only raw control bytes are refused (no server reads them the same way).
fn check_query(query: &[u8]) -> Result<(), TargetError> {
    match query.iter().any(|&b| is_control(b)) {
        true => Err(TargetError::Control),
        false => Ok(()),
    }
}

/// Where the path of an origin-form target (starting with `/`) ends, if the path is already canonical: only bytes
/// kept as they are and canonical escapes, no empty segment but the last, no dot segment. One pass that stops at
/// the query, no allocation.
fn canonical_path_end(target: &[u8]) -> Option<usize> {
    let mut segment_start = 1;
    let mut i = 1;
    while let Some(&b) = target.get(i) {
        match CLASS[usize::from(b)] {
            Byte::Keep => {}
            Byte::Slash => {
                let segment = target.get(segment_start..i).unwrap_or_default();
                if segment.is_empty() || dot_segment(segment) != Dot::None {
                    return None;
                }
                segment_start = i + 1;
            }
            Byte::Percent if canonical_escape(target.get(i..).unwrap_or_default()) => i += 2,
            Byte::Encode if b == b'?' => break,
            _ => return None,
        }
        i += 1;
    }
    let last = target.get(segment_start..i).unwrap_or_default();
    (dot_segment(last) == Dot::None).then_some(i)
}

/// Whether `bytes` starts with an escape that canonicalisation keeps as it is: upper-case hex, of a byte that is
/// neither unreserved (decoded) nor refused.
fn canonical_escape(bytes: &[u8]) -> bool {
    let upper = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
    match (bytes.get(1..3), escape_at(bytes)) {
        (Some([hi, lo]), Some(value)) => {
            upper(hi)
                && upper(lo)
                && !is_unreserved(value)
                && !is_control(value)
                && value != b'/'
                && value != b'\\'
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dot {
    None,
    /// `.`
    Current,
    /// `..`
    Parent,
    /// `.;…` or `..;…`
    WithParameters,
}

/// What a segment (decoded) is, as far as dot segments go.
fn dot_segment(segment: &[u8]) -> Dot {
    match segment {
        b"." => Dot::Current,
        b".." => Dot::Parent,
        [b'.', b';', ..] | [b'.', b'.', b';', ..] => Dot::WithParameters,
        _ => Dot::None,
    }
}

/// Builds the canonical target of a path that is not canonical as received.
fn rewrite(path: &[u8], query: &[u8]) -> Result<Canonical<'static>, TargetError> {
    let mut target = String::with_capacity(path.len() + query.len() + 8);
    canonical_path(path, &mut target)?;
    let path_len = target.len();
    // The query is ASCII-checked only for control bytes; any other byte is forwarded as received.
    match std::str::from_utf8(query) {
        Ok(query) => target.push_str(query),
        Err(_) => {
            for &b in query {
                push_byte(&mut target, b);
            }
        }
    }
    Ok(Canonical::Rewritten { target, path_len })
}

/// Appends a query byte: ASCII as it is, anything else encoded (the query of a non-UTF-8 target).
fn push_byte(out: &mut String, b: u8) {
    if b.is_ascii() {
        out.push(char::from(b));
    } else {
        push_escape(out, b);
    }
}

fn push_escape(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "%{b:02X}");
}

/// Writes the canonical form of `path` (which starts with `/`) to `out`.
///
/// `out` is kept as `/seg1/seg2/…/` while segments are added, so removing the last one is a truncation to where it
/// started; the final `/` is dropped at the end unless the path ends in one (or in a dot segment, which leaves
/// one, RFC 3986 §5.2.4).
fn canonical_path(path: &[u8], out: &mut String) -> Result<(), TargetError> {
    let base = out.len();
    out.push('/');
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing = false;
    let mut segments = path.get(1..).unwrap_or_default().split(|&b| b == b'/');
    let mut next = segments.next();
    while let Some(raw) = next {
        next = segments.next();
        let last = next.is_none();
        let start = out.len();
        decode_segment(raw, out)?;
        let segment = out.get(start..).unwrap_or_default().as_bytes();
        match dot_segment(segment) {
            Dot::WithParameters => return Err(TargetError::DotParameters),
            Dot::Current => {
                out.truncate(start);
                trailing = true;
            }
            Dot::Parent => {
                out.truncate(start);
                let parent = starts.pop().ok_or(TargetError::AboveRoot)?;
                out.truncate(parent);
                trailing = true;
            }
            Dot::None if segment.is_empty() => {
                // A repeated slash is merged; a trailing one is kept.
                trailing = last;
            }
            Dot::None => {
                starts.push(start);
                out.push('/');
                trailing = false;
            }
        }
    }
    if !trailing && out.len() > base + 1 {
        out.pop();
    }
    Ok(())
}

/// Appends the canonical form of one segment: unreserved escapes decoded, others upper-cased, bytes that may not
/// appear raw encoded.
fn decode_segment(raw: &[u8], out: &mut String) -> Result<(), TargetError> {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match CLASS[usize::from(b)] {
            Byte::Keep => out.push(char::from(b)),
            Byte::Percent => {
                let value = raw
                    .get(i..)
                    .and_then(escape_at)
                    .ok_or(TargetError::BadEscape)?;
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else if value == b'/' || value == b'\\' {
                    return Err(TargetError::EncodedSeparator);
                } else if is_control(value) {
                    return Err(TargetError::Control);
                } else {
                    push_escape(out, value);
                }
                i += 3;
                continue;
            }
            Byte::Backslash => return Err(TargetError::Backslash),
            Byte::Control => return Err(TargetError::Control),
            Byte::Encode => push_escape(out, b),
            // Segments are split on `/`.
            Byte::Slash => out.push('/'),
        }
        i += 1;
    }
    Ok(())
}

/// A canonical path with its escapes decoded, for route matching: what a server that routes on decoded paths
/// matches against. `None` when there is nothing to decode.
pub fn decoded_path(path: &str) -> Option<Vec<u8>> {
    // A plain loop: paths are short, and this runs for every request.
    if !path.bytes().any(|b| b == b'%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match bytes.get(i..).and_then(escape_at) {
            Some(value) if b == b'%' => {
                out.push(value);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// How a server that decodes every escape, merges slashes and removes dot segments (nginx's `$uri`, and most
/// frameworks) resolves the path of an origin-form target; `None` where such a server refuses it (a bad escape, a
/// `..` above the root, no leading `/`). Not used to serve requests: it is the oracle the property tests and the
/// fuzzer hold [`canonicalize`] to (the price of the canonical path is the price of the path such a server serves).
pub fn resolved_by_decoding_server(target: &[u8]) -> Option<Vec<u8>> {
    let path = target.split(|&b| b == b'?').next()?;
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b == b'%' {
            decoded.push(escape_at(path.get(i..)?)?);
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.first() != Some(&b'/') {
        return None;
    }
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for (n, segment) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        match *segment {
            b"" => trailing = last,
            b"." => trailing = true,
            b".." => {
                stack.pop()?;
                trailing = true;
            }
            other => {
                stack.push(other);
                trailing = false;
            }
        }
    }
    let mut served = b"/".to_vec();
    served.extend(stack.join(&b'/'));
    if trailing && served.len() > 1 {
        served.push(b'/');
    }
    Some(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, TargetError> {
        canonicalize(false, raw.as_bytes()).map(|c| match c {
            Canonical::AsReceived(path) => {
                let query = raw.get(path.len()..).unwrap_or_default();
                format!("{path}{query}")
            }
            Canonical::Rewritten { target, .. } => target,
        })
    }

    #[test]
    fn canonical_targets_are_returned_as_received() {
        for raw in [
            "/",
            "/v1/embeddings",
            "/v1/embeddings/",
            "/v1/embeddings?x=%2F&y=..//",
            "/a/b.c/d..e/.f/g.",
            "/a:b@c!$&'()*+,;=-_~",
            "/caf%C3%A9/a%3Ab%25",
        ] {
            let c = canonicalize(false, raw.as_bytes()).expect(raw);
            assert!(matches!(c, Canonical::AsReceived(_)), "{raw}: {c:?}");
            assert_eq!(c.path(), raw.split('?').next().unwrap_or_default());
        }
    }

    #[test]
    fn the_issue_table() {
        for raw in [
            "/health/../v1/embeddings",
            "/health/%2e%2e/v1/embeddings",
            "/v1/%65mbeddings",
            "//v1/embeddings",
            "/v1//embeddings",
            "/v1/./embeddings",
            "/v1/%2E/embeddings",
            "/x/.%2e/v1/embeddings",
            "http://api.example/v1/embeddings",
            "HTTPS://api.example/v1/./embeddings",
        ] {
            assert_eq!(canon(raw).as_deref(), Ok("/v1/embeddings"), "{raw}");
        }
        assert_eq!(canon("/v1/embeddings/."), Ok("/v1/embeddings/".to_owned()));
        assert_eq!(
            canon("/v1/embeddings/..?q=/../"),
            Ok("/v1/?q=/../".to_owned())
        );
        for (raw, error) in [
            ("/health/..%2fv1/embeddings", TargetError::EncodedSeparator),
            (
                "/health%2f..%2fv1/embeddings",
                TargetError::EncodedSeparator,
            ),
            ("/v1%2Fembeddings", TargetError::EncodedSeparator),
            ("/v1%5cembeddings", TargetError::EncodedSeparator),
            ("/v1\\embeddings", TargetError::Backslash),
            ("/..", TargetError::AboveRoot),
            ("/a/../../v1", TargetError::AboveRoot),
            ("/%2e%2e/v1", TargetError::AboveRoot),
            ("/a/..;/v1", TargetError::DotParameters),
            ("/a/.;x/v1", TargetError::DotParameters),
            ("/a%00", TargetError::Control),
            ("/a%7F", TargetError::Control),
            ("/a\tb", TargetError::Control),
            ("/a?b\x01", TargetError::Control),
            ("/a%2", TargetError::BadEscape),
            ("/a%zz", TargetError::BadEscape),
            ("x:/v1/embeddings", TargetError::Form),
            ("v1/embeddings", TargetError::Form),
            ("api.example:443", TargetError::Form),
            ("ftp://api.example/v1", TargetError::Form),
            ("http:///v1", TargetError::Form),
            ("*", TargetError::Form),
            ("", TargetError::Form),
        ] {
            assert_eq!(canon(raw), Err(error), "{raw:?}");
        }
    }

    #[test]
    fn escapes_are_normalised() {
        assert_eq!(canon("/caf%c3%a9"), Ok("/caf%C3%A9".to_owned()));
        assert_eq!(canon("/a%3ab"), Ok("/a%3Ab".to_owned()));
        assert_eq!(canon("/%7e%41%2d"), Ok("/~A-".to_owned()));
        assert_eq!(canon("/a b\"{}"), Ok("/a%20b%22%7B%7D".to_owned()));
        assert_eq!(
            canonicalize(false, b"/caf\xc3\xa9?q=\xff").expect("non-UTF-8 target"),
            Canonical::Rewritten {
                target: "/caf%C3%A9?q=%FF".to_owned(),
                path_len: 10
            }
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        assert_eq!(canon("http://h"), Ok("/".to_owned()));
        assert_eq!(canon("http://h?q=1"), Ok("/?q=1".to_owned()));
        assert_eq!(canon("https://h:8443/a?b"), Ok("/a?b".to_owned()));
    }

    #[test]
    fn asterisk_is_for_options_only() {
        assert_eq!(canonicalize(true, b"*"), Ok(Canonical::AsReceived("*")));
        assert_eq!(canonicalize(false, b"*"), Err(TargetError::Form));
        assert_eq!(canonicalize(true, b"**"), Err(TargetError::Form));
    }

    #[test]
    fn trailing_slashes_and_dots() {
        assert_eq!(canon("/a/"), Ok("/a/".to_owned()));
        assert_eq!(canon("/a//"), Ok("/a/".to_owned()));
        assert_eq!(canon("/a/b/.."), Ok("/a/".to_owned()));
        assert_eq!(canon("/a/."), Ok("/a/".to_owned()));
        assert_eq!(canon("/a/./b"), Ok("/a/b".to_owned()));
        assert_eq!(canon("/a/.."), Ok("/".to_owned()));
        assert_eq!(canon("//"), Ok("/".to_owned()));
        assert_eq!(canon("/."), Ok("/".to_owned()));
        assert_eq!(canon("/a//../b"), Ok("/b".to_owned()));
    }

    #[test]
    fn the_oracle_resolves_as_nginx_does() {
        // Each row checked against nginx 1.22 (`return 200 $uri`, tests/support/nginx.rs).
        for (target, served) in [
            ("/health/../v1/embeddings", Some("/v1/embeddings")),
            ("/health/..%2fv1/embeddings", Some("/v1/embeddings")),
            ("//v1//embeddings/.", Some("/v1/embeddings/")),
            ("/v1/a%3Ab?q=/..", Some("/v1/a:b")),
            ("/..", None),
            ("x:/v1", None),
            ("/a%zz", None),
        ] {
            assert_eq!(
                resolved_by_decoding_server(target.as_bytes()),
                served.map(|s| s.as_bytes().to_vec()),
                "{target}"
            );
        }
    }

    #[test]
    fn the_decoded_path_is_what_servers_route_on() {
        assert_eq!(decoded_path("/a/b"), None);
        assert_eq!(decoded_path("/a%3Ab"), Some(b"/a:b".to_vec()));
        assert_eq!(decoded_path("/%25%41"), Some(b"/%A".to_vec()));
    }
}
