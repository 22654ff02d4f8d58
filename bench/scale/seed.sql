-- The scale benchmark's data, written in bulk (psql -v orgs=N -v keys=K): N orgs, each with a Stripe customer and a
-- subscription (every tenth trialing, the rest active; plans starter, growth and pro in turn), and K API keys per org
-- whose text keys.lua can rebuild: key j of org n is tg_s<n as 7 digits>k<j>, padded with x to 46 characters.
\set ON_ERROR_STOP on
SET synchronous_commit = off;
BEGIN;
INSERT INTO orgs (clerk_org_id, name, owner_user_id, stripe_customer_id)
SELECT 'org_s' || g, 'scale ' || g, 'user_s' || g, 'cus_s' || g
  FROM generate_series(1, :orgs) g;
INSERT INTO subscriptions (org_id, stripe_customer_id, stripe_subscription_id, status, plan_code, stripe_price_id,
                           current_period_start, current_period_end, trial_end, billing_cycle_anchor)
SELECT o.id, o.stripe_customer_id, 'sub_s' || n,
       CASE WHEN n % 10 = 0 THEN 'trialing' ELSE 'active' END,
       (ARRAY['pro', 'starter', 'growth'])[1 + n % 3],
       'price_' || (ARRAY['pro', 'starter', 'growth'])[1 + n % 3],
       date_trunc('day', now()) - interval '10 days', date_trunc('day', now()) + interval '20 days',
       CASE WHEN n % 10 = 0 THEN date_trunc('day', now()) + interval '20 days' END,
       date_trunc('day', now()) - interval '10 days'
  FROM orgs o, LATERAL (SELECT substr(o.clerk_org_id, 6)::int AS n) s;
INSERT INTO api_keys (id, org_id, name, key_hash, prefix)
SELECT gen_random_uuid(), o.id, 'scale ' || j, sha256(convert_to(k.key, 'UTF8')), left(k.key, 11)
  FROM orgs o, generate_series(0, :keys - 1) j,
       LATERAL (SELECT 'tg_' || rpad('s' || lpad(substr(o.clerk_org_id, 6), 7, '0') || 'k' || j, 43, 'x') AS key) k;
COMMIT;
ANALYZE orgs;
ANALYZE subscriptions;
ANALYZE api_keys;
