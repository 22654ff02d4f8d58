//! Tollgate's domain: identifiers, billing periods, plans, route pricing, quota arithmetic and the
//! denial envelope.
//!
//! Everything here is pure: no I/O, no async runtime and no clock. Time is always a parameter, so the
//! proxy, the control plane and the tests all get the same answer for the same instant.
//!
//! # Layout
//!
//! * [`ids`]: validated newtypes for the identifiers that cross the API ([`OrgId`], [`Metric`],
//!   [`PlanCode`]).
//! * [`period`]: Stripe-style monthly billing periods ([`Period`]) and their `YYYY-MM` key
//!   ([`PeriodKey`]).
//! * [`plan`]: PLANS_CONFIG (`config/plans.toml`) parsed into a validated [`PlanCatalog`].
//! * [`target`]: the canonical request target ([`canonicalize`]) that the proxy prices and forwards.
//! * [`routes`]: the routes file (`config/routes.toml`) parsed into a [`RouteTable`] that prices a
//!   canonical request path.
//! * [`quota`]: [`decide`] and [`remaining`], the check-and-consume arithmetic.
//! * [`envelope`]: the standard 429 body, [`DenyEnvelope`].
//! * [`ratelimit`]: per-org rate limits of the control plane's expensive endpoints ([`RateLimit`]) and their 429
//!   body ([`RateLimitEnvelope`], a sibling of the envelope).
//! * [`billing`]: which plan and period apply to an org, from its subscription state ([`Billing`]).
//! * [`subscription`]: a Stripe subscription as Tollgate keeps it, and plan changes ([`PlanChange`]).
//! * [`events`]: why a Stripe event is terminally ignored ([`IgnoreReason`]).
//! * [`overage`]: usage past the included units (issue 22, being built): what it costs as Stripe invoices it,
//!   what a spend cap buys, the [`overage::Bound`] admission stops at, and the thresholds a change crosses.
//!
//! Every failure is a [`DomainError`] whose message starts with the field or configuration key at
//! fault, so an edge can put it in a problem+json `detail` or a start-up error line unchanged.

pub mod billing;
pub mod envelope;
pub mod events;
pub mod ids;
pub mod net;
pub mod overage;
pub mod period;
pub mod plan;
pub mod quota;
pub mod ratelimit;
pub mod routes;
pub mod subscription;
pub mod target;

pub use billing::{Access, Billing, PendingPlan, SubscriptionStatus, Terms};
pub use envelope::DenyEnvelope;
pub use events::IgnoreReason;
pub use ids::{Metric, OrgId, PlanCode};
pub use overage::{Bound, SpendCap};
pub use period::{Period, PeriodKey};
pub use plan::{Overage, Plan, PlanCatalog, PriceRef};
pub use quota::{Decision, decide, remaining};
pub use ratelimit::{RateLimit, RateLimitEnvelope};
pub use routes::{RouteClass, RouteTable};
pub use subscription::{PlanChange, StripePrice, StripeSubscription, SubscriptionState};
pub use target::{Canonical, TargetError, canonicalize};

/// Why a value or a configuration file was rejected.
///
/// The `Display` form always starts with the request field (`metric: …`) or the configuration key
/// path (`plans.starter.price: …`) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A value does not have the required form, e.g. an `orgId` without the `org_` prefix.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field, as spelled on the wire (`orgId`, `metric`, `planCode`, `periodKey`).
        field: &'static str,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// A well-formed value that PLANS_CONFIG does not define, e.g. a metric no plan names.
    #[error("{field}: unknown value `{value}`")]
    Unknown {
        /// The request field, as spelled on the wire.
        field: &'static str,
        /// The rejected value; it passed validation, so it is short and printable.
        value: String,
    },
    /// A configuration key is missing, has the wrong type or holds an invalid value.
    #[error("{key}: {reason}")]
    Config {
        /// The dotted key path, e.g. `plans.starter.price` or `routes[2].metric`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration file is not valid TOML.
    #[error("line {line}, column {column}: {reason}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's message, on one line.
        reason: String,
    },
}

// === impl DomainError ===

impl DomainError {
    /// The request field or configuration key path at fault; `None` for a TOML syntax error.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Unknown { field, .. } => Some(field),
            Self::Config { key, .. } => Some(key),
            Self::Syntax { .. } => None,
        }
    }

    /// Re-attributes a value error to the configuration key it was read from.
    fn at(self, key: String) -> Self {
        let reason = match self {
            Self::Invalid { reason, .. } => reason.to_owned(),
            Self::Unknown { value, .. } => format!("unknown value `{value}`"),
            Self::Config { reason, .. } | Self::Syntax { reason, .. } => reason,
        };
        Self::Config { key, reason }
    }
}

/// Reading a parsed TOML document key by key, so that every error names its full key path.
///
/// `toml`'s serde errors carry a byte span but not the key path (`unknown field "cost"` does not say
/// which `[[routes]]` entry), so both configuration files are walked by hand instead.
mod toml_table {
    use toml::{Table, Value};

    use super::DomainError;

    /// Parses a whole document, mapping a syntax error to its line and column.
    pub(super) fn parse(text: &str) -> Result<Table, DomainError> {
        text.parse::<Table>().map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let before = text.get(..offset).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .map_or(0, |tail| tail.chars().count())
                + 1;
            let reason = err.message().trim().replace('\n', "; ");
            DomainError::Syntax {
                line,
                column,
                reason,
            }
        })
    }

    /// `path.key`, quoting `key` when it is not a bare TOML key.
    pub(super) fn join(path: &str, key: &str) -> String {
        let bare = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match (path.is_empty(), bare) {
            (true, true) => key.to_owned(),
            (true, false) => format!("{key:?}"),
            (false, true) => format!("{path}.{key}"),
            (false, false) => format!("{path}.{key:?}"),
        }
    }

    /// A configuration error at `key`.
    pub(super) fn error(key: String, reason: impl Into<String>) -> DomainError {
        DomainError::Config {
            key,
            reason: reason.into(),
        }
    }

    /// A table whose keys have been checked against the allowed set.
    pub(super) struct Fields<'a> {
        path: String,
        table: &'a Table,
    }

    impl<'a> Fields<'a> {
        /// Rejects the first key of `table` (at `path`) that is not in `allowed`.
        pub(super) fn new(
            path: String,
            table: &'a Table,
            allowed: &[&str],
        ) -> Result<Self, DomainError> {
            if let Some(unknown) = table.keys().find(|k| !allowed.contains(&k.as_str())) {
                let reason = format!("unknown key (expected one of: {})", allowed.join(", "));
                return Err(error(join(&path, unknown), reason));
            }
            Ok(Self { path, table })
        }

        /// Views `value` (found at `path`) as a table with only `allowed` keys.
        pub(super) fn of_value(
            path: String,
            value: &'a Value,
            allowed: &[&str],
        ) -> Result<Self, DomainError> {
            match value {
                Value::Table(table) => Self::new(path, table, allowed),
                other => Err(wrong_type(path, "a table", other)),
            }
        }

        /// The full key path of `name` in this table.
        pub(super) fn key(&self, name: &str) -> String {
            join(&self.path, name)
        }

        pub(super) fn string(&self, name: &str) -> Result<Option<&'a str>, DomainError> {
            self.typed(name, "a string", |v| v.as_str())
        }

        pub(super) fn integer(&self, name: &str) -> Result<Option<i64>, DomainError> {
            self.typed(name, "an integer", Value::as_integer)
        }

        pub(super) fn boolean(&self, name: &str) -> Result<Option<bool>, DomainError> {
            self.typed(name, "a boolean", Value::as_bool)
        }

        pub(super) fn table(&self, name: &str) -> Result<Option<&'a Table>, DomainError> {
            self.typed(name, "a table", Value::as_table)
        }

        pub(super) fn array(&self, name: &str) -> Result<Option<&'a [Value]>, DomainError> {
            self.typed(name, "an array", |v| v.as_array().map(Vec::as_slice))
        }

        fn typed<T>(
            &self,
            name: &str,
            expected: &str,
            cast: impl FnOnce(&'a Value) -> Option<T>,
        ) -> Result<Option<T>, DomainError> {
            match self.table.get(name) {
                None => Ok(None),
                Some(value) => cast(value)
                    .map(Some)
                    .ok_or_else(|| wrong_type(self.key(name), expected, value)),
            }
        }
    }

    /// `key` holds a value of the wrong TOML type.
    pub(super) fn wrong_type(key: String, expected: &str, found: &Value) -> DomainError {
        error(key, format!("must be {expected}, not {}", found.type_str()))
    }
}
