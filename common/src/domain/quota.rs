//! Quota arithmetic: whether a request of some cost fits in what is left of a limit.
//!
//! All of it saturates or checks, so no input (including `u64::MAX`) overflows.

/// The outcome of checking `cost` units against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The request fits and its cost is consumed.
    Allow {
        /// Units used after consuming the cost; never above the limit.
        used_after: u64,
        /// Units left after consuming the cost.
        remaining: u64,
    },
    /// The request does not fit; nothing is consumed.
    Deny {
        /// Units used, unchanged.
        used: u64,
        /// Units left, too few for this request's cost (0 once the quota is used up).
        remaining: u64,
    },
}

// === impl Decision ===

impl Decision {
    /// Whether the request is admitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// Units left after the decision: what `RateLimit-Remaining` reports.
    pub fn remaining(&self) -> u64 {
        match *self {
            Self::Allow { remaining, .. } | Self::Deny { remaining, .. } => remaining,
        }
    }
}

/// Units of `limit` not yet used; 0 when `used` is at or past the limit.
pub fn remaining(used: u64, limit: u64) -> u64 {
    limit.saturating_sub(used)
}

/// Admits a request costing `cost` iff `used + cost <= limit`, and says what is left.
///
/// A denial consumes nothing, so a denied request never counts against the org (no
/// increment-then-compare).
pub fn decide(used: u64, limit: u64, cost: u64) -> Decision {
    match used.checked_add(cost) {
        Some(used_after) if used_after <= limit => Decision::Allow {
            used_after,
            remaining: limit - used_after,
        },
        _ => Decision::Deny {
            used,
            remaining: remaining(used, limit),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn examples() {
        assert_eq!(
            decide(0, 1000, 1),
            Decision::Allow {
                used_after: 1,
                remaining: 999
            }
        );
        assert_eq!(
            decide(999, 1000, 1),
            Decision::Allow {
                used_after: 1000,
                remaining: 0
            }
        );
        assert_eq!(
            decide(1000, 1000, 1),
            Decision::Deny {
                used: 1000,
                remaining: 0
            }
        );
        assert_eq!(
            decide(995, 1000, 10),
            Decision::Deny {
                used: 995,
                remaining: 5
            }
        );
        assert_eq!(
            decide(0, 0, 1),
            Decision::Deny {
                used: 0,
                remaining: 0
            }
        );
        assert_eq!(
            decide(1200, 1000, 1),
            Decision::Deny {
                used: 1200,
                remaining: 0
            }
        );
        assert_eq!(
            decide(u64::MAX, u64::MAX, 1),
            Decision::Deny {
                used: u64::MAX,
                remaining: 0
            }
        );
        assert_eq!(remaining(3, 10), 7);
        assert_eq!(remaining(30, 10), 0);
    }

    fn amount() -> impl Strategy<Value = u64> {
        // Small values exercise the boundary; the full range exercises overflow.
        prop_oneof![0..2_000_u64, any::<u64>(), (u64::MAX - 2_000)..=u64::MAX]
    }

    proptest! {
        #[test]
        fn never_admits_past_the_limit(used in amount(), limit in amount(), cost in amount()) {
            let decision = decide(used, limit, cost);
            match decision {
                Decision::Allow { used_after, remaining: left } => {
                    prop_assert!(used_after <= limit);
                    prop_assert_eq!(u128::from(used_after), u128::from(used) + u128::from(cost));
                    prop_assert_eq!(left, limit - used_after);
                    prop_assert!(decision.is_allowed());
                }
                Decision::Deny { used: unchanged, remaining: left } => {
                    prop_assert_eq!(unchanged, used);
                    prop_assert!(u128::from(used) + u128::from(cost) > u128::from(limit));
                    prop_assert_eq!(left, remaining(used, limit));
                    // Denied for want of units, unless the quota is already overdrawn.
                    prop_assert!(left < cost || left == 0);
                    prop_assert!(!decision.is_allowed());
                }
            }
            prop_assert!(decision.remaining() <= limit);
        }

        #[test]
        fn zero_cost_is_allowed_within_the_limit(used in amount(), limit in amount()) {
            prop_assert_eq!(decide(used, limit, 0).is_allowed(), used <= limit);
        }

        #[test]
        fn remaining_is_the_saturating_difference(used in amount(), limit in amount()) {
            let left = remaining(used, limit);
            prop_assert!(left <= limit);
            prop_assert_eq!(left == 0, used >= limit);
            prop_assert_eq!(u128::from(left), u128::from(limit).saturating_sub(u128::from(used)));
        }
    }
}
