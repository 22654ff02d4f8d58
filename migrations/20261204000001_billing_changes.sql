-- Every change to an org's subscriptions is announced on `tollgate_billing_changes` (payload: the org's internal
-- id) when its transaction commits, so caches of billing state (the control plane's) drop the org at once,
-- whoever wrote the row. Caches still expire within TOLLGATE_REFRESH_INTERVAL_MS should a notification be lost.
CREATE FUNCTION tollgate_announce_billing_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tollgate_billing_changes', OLD.org_id::text);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('tollgate_billing_changes', NEW.org_id::text);
    IF TG_OP = 'UPDATE' AND OLD.org_id <> NEW.org_id THEN
        PERFORM pg_notify('tollgate_billing_changes', OLD.org_id::text);
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER subscriptions_announce_change
    AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION tollgate_announce_billing_change();
