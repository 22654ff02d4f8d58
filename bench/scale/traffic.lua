-- The scale benchmark's load: key 0 of orgs 1..active, drawn Zipf-like (rank r with weight 1/r), and a share of
-- requests with keys no proxy has cached yet: key j of org 1 + c mod orgs for the c-th such request, j running
-- through the list given (each key once), after which those requests fall back to warm keys.
-- usage: wrk -t1 -cC -dDs -s traffic.lua http://proxy -- <active> <orgs> <cold j list, e.g. 2,3> <cold share> <seed>
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local keys = require("keys")
local active, orgs, cold_js, cold_share
local cdf = {}
local cold_max = 0
cold, warm = 0, 0 -- globals: done() reads them with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  active, orgs = tonumber(args[1]), tonumber(args[2])
  cold_js = {}
  for j in string.gmatch(args[3], "%d+") do
    table.insert(cold_js, tonumber(j))
  end
  cold_share = tonumber(args[4])
  math.randomseed(tonumber(args[5]))
  local sum = 0
  for r = 1, active do
    sum = sum + 1 / r
    cdf[r] = sum
  end
  for r = 1, active do
    cdf[r] = cdf[r] / sum
  end
  cold_max = orgs * #cold_js
end

local function zipf()
  local u, lo, hi = math.random(), 1, active
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  if cold < cold_max and math.random() < cold_share then
    local org = 1 + cold % orgs
    local j = cold_js[1 + math.floor(cold / orgs)]
    cold = cold + 1
    return keys.request(org, j)
  end
  warm = warm + 1
  return keys.request(zipf(), 0)
end

function done(summary, latency, requests)
  local c, w = 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("cold")
    w = w + t:get("warm")
  end
  io.write(string.format("sent cold %d warm %d\n", c, w))
end
