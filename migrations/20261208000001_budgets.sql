-- An org's spend cap on overage (CONTRACT §9, `budget.set`): the amount in the currency's minor units and, per
-- overage price of PLANS_CONFIG (its lookup key or id as written there), the whole units of usage that amount buys
-- at that price, computed by the control plane from Stripe's price when the cap is set. A price missing from
-- `units` buys nothing (the cap stops overage there) until the control plane recomputes the row.
-- A change is a billing change: announced on `tollgate_billing_changes` when it commits, like a subscription's.
CREATE TABLE org_budgets (
    org_id      bigint      PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    amount      bigint      NOT NULL CHECK (amount >= 0),
    currency    text        NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    units       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(units) = 'object'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER org_budgets_announce_change
    AFTER INSERT OR UPDATE OR DELETE ON org_budgets
    FOR EACH ROW EXECUTE FUNCTION tollgate_announce_billing_change();
