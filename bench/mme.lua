-- wrk script for bench/mme.py: POST the body in $BENCH_BODY (text/csv) to
-- /models/m<NNN>/invoke for a random one of $BENCH_MODELS models; prints one JSON line of
-- figures (latency in microseconds).
local fh = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = fh:read("*a")
fh:close()
local models = tonumber(os.getenv("BENCH_MODELS"))
local headers = {["Content-Type"] = "text/csv"}

function init(args)
  math.randomseed(os.time())
end

function request()
  local path = string.format("/models/m%03d/invoke", math.random(0, models - 1))
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,' ..
    '"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.status + e.timeout))
end
