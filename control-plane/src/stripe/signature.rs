//! `Stripe-Signature` verification (CONTRACT §8, 2.3): Stripe's scheme, on the raw body.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=…]`. A signature is HMAC-SHA256 of `t.` followed by the
//! raw body, keyed with the endpoint's secret (`whsec_…`, the whole string). Any `v1` matching any configured secret
//! is accepted — Stripe sends several while it rolls a secret, and two configured secrets let an operator roll ours.
//! Comparisons are constant-time (`Mac::verify_slice`); timestamps more than the tolerance away from now are refused,
//! so a captured event cannot be replayed later.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Stripe's default tolerance: five minutes.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a signature was refused. The messages are safe to return: they say what is wrong, never a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("Stripe-Signature: header missing")]
    Missing,
    /// Not `t=…,v1=…`.
    #[error("Stripe-Signature: malformed")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("Stripe-Signature: timestamp outside the tolerance")]
    Expired,
    /// No `v1` matches any secret.
    #[error("Stripe-Signature: no signature matches")]
    Mismatch,
}

/// Verifies `header` for `payload` against `secrets` at `now` (Unix seconds).
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secrets: &[SecretString],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            "v1" => signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            // v0 (test-mode legacy) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Expired);
    }
    let prefix = format!("{timestamp}.");
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(prefix.as_bytes());
        mac.update(payload);
        if signatures
            .iter()
            .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// The `Stripe-Signature` header Stripe would send for `payload` at `timestamp` (for tests and the bench).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const T: i64 = 1_700_000_000;
    /// HMAC-SHA256 of `1700000000.{"id":"evt_1","object":"event"}` keyed `whsec_test_secret`, computed independently
    /// (Python's `hmac`).
    const EXPECTED: &str = "0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";

    fn secrets(s: &[&str]) -> Vec<SecretString> {
        s.iter()
            .map(|s| SecretString::from((*s).to_owned()))
            .collect()
    }

    #[test]
    fn matches_stripes_scheme() {
        assert_eq!(
            sign(PAYLOAD, "whsec_test_secret", T),
            format!("t={T},v1={EXPECTED}")
        );
        let header = format!("t={T},v1={EXPECTED}");
        assert_eq!(
            verify(
                Some(&header),
                PAYLOAD,
                &secrets(&["whsec_test_secret"]),
                T + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn any_v1_and_any_secret_will_do() {
        let header = format!("t={T},v1={},v1={EXPECTED},v0=abcd", "00".repeat(32));
        assert_eq!(
            verify(
                Some(&header),
                PAYLOAD,
                &secrets(&["whsec_old", "whsec_test_secret"]),
                T
            ),
            Ok(())
        );
    }

    #[test]
    fn refuses_what_does_not_verify() {
        let good = format!("t={T},v1={EXPECTED}");
        let s = secrets(&["whsec_test_secret"]);
        assert_eq!(verify(None, PAYLOAD, &s, T), Err(SignatureError::Missing));
        assert_eq!(
            verify(Some(&good), b"{\"id\":\"evt_2\"}", &s, T),
            Err(SignatureError::Mismatch),
            "tampered body"
        );
        assert_eq!(
            verify(Some(&good), PAYLOAD, &secrets(&["whsec_other"]), T),
            Err(SignatureError::Mismatch),
            "wrong secret"
        );
        assert_eq!(
            verify(Some(&good), PAYLOAD, &s, T + TOLERANCE_SECS + 1),
            Err(SignatureError::Expired)
        );
        for bad in ["", "t=abc,v1=00", "v1=00", &format!("t={T}"), "t=1,v1=zz"] {
            assert_eq!(
                verify(Some(bad), PAYLOAD, &s, T),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }
}
