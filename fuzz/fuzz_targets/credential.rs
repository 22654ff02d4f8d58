//! Credential parsing: `Authorization` values and header names as a client may send them. Never panics; a bearer
//! token is visible ASCII and the scheme was `Bearer` in some case; the header-name alias rule is the folded
//! comparison it claims to be.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_common::credential::{self, Authorization, Presented};

fuzz_target!(|data: &[u8]| {
    match Authorization::parse(data) {
        Authorization::Bearer(token) => {
            assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
            let trimmed = data.trim_ascii();
            assert!(trimmed.len() > 6 && trimmed[..6].eq_ignore_ascii_case(b"bearer"));
            assert!(matches!(trimmed[6], b' ' | b'\t'));
        }
        Authorization::MalformedBearer | Authorization::Other => {}
    }

    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, value.clone());
        headers.insert(credential::API_KEY, value);
        let presented = Presented::read(&headers);
        let _ = presented.single();
    }

    if let Ok(name) = std::str::from_utf8(data) {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        let expected = name.contains('_')
            && (folded == credential::API_KEY_HEADER || folded == credential::ORG_HEADER);
        assert_eq!(credential::is_alias_of_ours(name), expected);
    }
});
