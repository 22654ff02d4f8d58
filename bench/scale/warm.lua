-- Warms a proxy's caches: one request with key j of each org in [from, to], in order, then key j of `to` again until
-- wrk's duration ends. done() prints "warmed <count>" so the driver can go on from where it stopped.
-- usage: wrk -t1 -c16 -d<s>s -s warm.lua http://proxy -- <from> <to> <j>
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
local keys = require("keys")
local from, to, j
n = 0 -- global: done() reads it with thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  from, to, j = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  n = 0
end

function request()
  local org = from + n
  if org > to then
    org = to
  else
    n = n + 1
  end
  return keys.request(org, j)
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do
    total = total + t:get("n")
  end
  io.write(string.format("warmed %d\n", total))
end
