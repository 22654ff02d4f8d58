//! Validated identifiers.
//!
//! Each newtype can only hold a value that passed its `parse`, so code that receives one never
//! re-checks it. All of them serialize as their plain string and deserialize through `parse`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::DomainError;

/// Declares a string newtype whose every value satisfies `$valid`.
macro_rules! validated_id {
    (
        $(#[$meta:meta])*
        $name:ident { field: $field:literal, reason: $reason:literal, valid: $valid:path $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("The wire name of this field, used in error messages: `", $field, "`.")]
            pub const FIELD: &'static str = $field;

            #[doc = concat!("Validates `s` as a `", $field, "`; the error names the field.")]
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                Self::check(s)?;
                Ok(Self(s.to_owned()))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            fn check(s: &str) -> Result<(), DomainError> {
                if $valid(s) {
                    Ok(())
                } else {
                    Err(DomainError::Invalid { field: $field, reason: $reason })
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::check(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

validated_id! {
    /// A Clerk organization id: `org_` followed by 1 to 64 ASCII letters, digits or `_`
    /// (e.g. `org_2abcXYZ`).
    OrgId {
        field: "orgId",
        reason: "must look like org_… (up to 64 letters, digits and _)",
        valid: is_org_id,
    }
}

validated_id! {
    /// A metered quantity, e.g. `api_call`: a lowercase letter, then up to 63 lowercase letters,
    /// digits or `_`.
    ///
    /// Being well-formed does not make a metric known; [`PlanCatalog::metric`](super::PlanCatalog::metric)
    /// checks both.
    Metric {
        field: "metric",
        reason: "must be 1 to 64 lowercase letters, digits and _, starting with a letter",
        valid: is_metric,
    }
}

validated_id! {
    /// A plan code of PLANS_CONFIG, e.g. `starter`: a lowercase letter, then up to 31 lowercase
    /// letters, digits or `_`.
    PlanCode {
        field: "planCode",
        reason: "must be 1 to 32 lowercase letters, digits and _, starting with a letter",
        valid: is_plan_code,
    }
}

impl OrgId {
    /// What [`OrgId::parse`] accepts, as an ECMA-262 regular expression (for the OpenAPI document).
    pub const PATTERN: &'static str = "^org_[A-Za-z0-9_]{1,64}$";
}

impl Metric {
    /// The metric a request costs when the routes file says nothing else.
    pub const API_CALL: &'static str = "api_call";
    /// What [`Metric::parse`] accepts, as an ECMA-262 regular expression.
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_]{0,63}$";
}

impl PlanCode {
    /// The plan whose limits apply while a subscription is trialing; every catalog has it.
    pub const TRIAL: &'static str = "trial";
    /// What [`PlanCode::parse`] accepts, as an ECMA-262 regular expression.
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_]{0,31}$";
}

fn is_org_id(s: &str) -> bool {
    s.strip_prefix("org_").is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

fn is_metric(s: &str) -> bool {
    is_snake_case(s, 64)
}

fn is_plan_code(s: &str) -> bool {
    is_snake_case(s, 32)
}

/// `[a-z][a-z0-9_]*`, at most `max_len` bytes.
fn is_snake_case(s: &str, max_len: usize) -> bool {
    let mut bytes = s.bytes();
    s.len() <= max_len
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids() {
        for ok in [
            "org_2abcXYZ",
            "org_a",
            "org_a_b",
            &format!("org_{}", "x".repeat(64)),
        ] {
            assert_eq!(OrgId::parse(ok).map(|id| id.to_string()), Ok(ok.to_owned()));
        }
        for bad in [
            "",
            "org_",
            "org",
            "ORG_abc",
            "user_abc",
            "org_ab-c",
            "org_ab c",
            "org_é",
            &format!("org_{}", "x".repeat(65)),
        ] {
            let err = OrgId::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("orgId: "), "{err}");
        }
    }

    #[test]
    fn metrics_and_plan_codes() {
        for ok in ["api_call", "tokens", "a", "a1_", &"m".repeat(64)] {
            assert!(Metric::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Api",
            "1a",
            "_a",
            "api-call",
            "api call",
            &"m".repeat(65),
        ] {
            let err = Metric::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("metric: "), "{err}");
        }
        assert!(PlanCode::parse(&"p".repeat(32)).is_ok());
        let err = PlanCode::parse(&"p".repeat(33)).expect_err("33 chars");
        assert!(err.to_string().starts_with("planCode: "), "{err}");
        assert!(PlanCode::parse(PlanCode::TRIAL).is_ok());
        assert!(Metric::parse(Metric::API_CALL).is_ok());
    }

    #[test]
    fn serde_is_the_plain_string_and_validates() {
        let org = OrgId::parse("org_2abcXYZ").expect("valid");
        assert_eq!(
            serde_json::to_string(&org).expect("serialize"),
            r#""org_2abcXYZ""#
        );
        let back: OrgId = serde_json::from_str(r#""org_2abcXYZ""#).expect("deserialize");
        assert_eq!(back, org);
        let err = serde_json::from_str::<OrgId>(r#""nope""#).expect_err("invalid");
        assert!(err.to_string().starts_with("orgId: "), "{err}");
        let err = serde_json::from_str::<Metric>(r#""Bad""#).expect_err("invalid");
        assert!(err.to_string().starts_with("metric: "), "{err}");
    }
}
