-- wrk script for load_test.py: POST the same multipart body on every request and check each answer.
-- The body and its content type come from the environment (written by load_test.py), so the
-- photo is byte-identical to the httpx generator's.
local f = assert(io.open(os.getenv("AGELENS_WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("AGELENS_WRK_CONTENT_TYPE")

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  bad = 0
  non200 = 0
end

-- A 200 must hold exactly one face: one "box" key in the JSON.
response = function(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  else
    local _, n = string.gsub(body, '"box"', "")
    if n ~= 1 then bad = bad + 1 end
  end
end

done = function(summary, latency, requests)
  local bad_total, non200_total = 0, 0
  for _, t in ipairs(threads) do
    bad_total = bad_total + t:get("bad")
    non200_total = non200_total + t:get("non200")
  end
  io.write(string.format(
    'AGELENS_JSON {"requests": %d, "seconds": %.3f, "non200": %d, "bad_bodies": %d, ' ..
    '"socket_errors": %d, "p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "mean_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, non200_total, bad_total,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, latency.mean / 1e3))
end
