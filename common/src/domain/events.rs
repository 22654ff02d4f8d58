//! Stripe webhook events that Tollgate can never mirror: the terminal `ignored` outcome and its reasons.
//!
//! An event is *ignored* — processed once, never retried, visible to the operator, still replayable (8.1) — when
//! what it concerns is not Tollgate's to mirror. Everything else that fails (Stripe unreachable, 5xx, 429,
//! `lock_timeout`, an unreadable answer, a database error) is transient: retried with backoff.

use super::DomainError;

/// Why an event was ignored. A closed set: it is a metric label (`tollgate_cp_webhook_ignored_total{reason}`) and
/// a column (`stripe_events.ignored_reason`, checked by the same list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// An event type Tollgate does not act on (stored and acknowledged).
    UnhandledType,
    /// The object's customer is owned by no org and carries no `metadata.orgId`: made outside Tollgate
    /// (a Dashboard subscription, another product on the same account).
    ForeignCustomer,
    /// The subscription (or its scheduled phase) is on a price that no plan of PLANS_CONFIG names.
    UnknownPrice,
    /// Stripe answers `resource_missing` for the event's object: it was deleted (a draft invoice, a customer).
    ObjectDeleted,
    /// The object concerns no subscription (a one-off invoice, a schedule that never had one): nothing to mirror.
    NoSubscription,
}

impl IgnoreReason {
    /// Every reason, for registering metric series up front and for the column's CHECK.
    pub const ALL: [Self; 5] = [
        Self::UnhandledType,
        Self::ForeignCustomer,
        Self::UnknownPrice,
        Self::ObjectDeleted,
        Self::NoSubscription,
    ];

    /// The stored value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnhandledType => "unhandled_type",
            Self::ForeignCustomer => "foreign_customer",
            Self::UnknownPrice => "unknown_price",
            Self::ObjectDeleted => "object_deleted",
            Self::NoSubscription => "no_subscription",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| DomainError::Unknown {
                field: "reason",
                value: s.to_owned(),
            })
    }

    /// What the operator reads in the listing.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnhandledType => "an event type Tollgate does not act on",
            Self::ForeignCustomer => {
                "the customer belongs to no organization and has no metadata.orgId (made outside Tollgate)"
            }
            Self::UnknownPrice => "the subscription's price is not a price of PLANS_CONFIG",
            Self::ObjectDeleted => "Stripe says the object no longer exists (resource_missing)",
            Self::NoSubscription => "the object concerns no subscription",
        }
    }
}

impl std::fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_are_distinct_snake_case_labels() {
        let mut seen = std::collections::HashSet::new();
        for r in IgnoreReason::ALL {
            assert_eq!(IgnoreReason::parse(r.as_str()), Ok(r));
            assert!(seen.insert(r.as_str()));
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!(!r.describe().is_empty());
        }
        assert!(IgnoreReason::parse("failed").is_err());
    }
}
