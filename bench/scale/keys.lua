-- The scale benchmark's keys, shared by its wrk scripts. Key j (0-9) of seeded org n is
-- "tg_s" .. n as 7 digits .. "k" .. j, padded with "x" to Tollgate's 46 characters (seed.sql makes the same text).
local M = {}
local pad = string.rep("x", 33)
function M.key(org, j)
  return string.format("tg_s%07dk%d", org, j) .. pad
end
function M.request(org, j)
  return wrk.format("GET", "/v1/x", { ["X-Api-Key"] = M.key(org, j) })
end
return M
