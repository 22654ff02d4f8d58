-- The background half of leasing, after seed.lua and apply_report.lua (see `SETTLE` in counters.rs).
-- Returns {applied, used, leased, epoch}.
return {applied, u, l, e}
