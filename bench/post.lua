-- wrk script: POST the body in $BENCH_BODY (a file) with $BENCH_CT as Content-Type, or GET
-- when $BENCH_BODY is empty; prints one JSON line of figures (latency in microseconds).
local body_file = os.getenv("BENCH_BODY") or ""
if body_file ~= "" then
  local fh = assert(io.open(body_file, "rb"))
  wrk.body = fh:read("*a")
  fh:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = os.getenv("BENCH_CT") or "text/csv"
  local accept = os.getenv("BENCH_ACCEPT") or ""
  if accept ~= "" then wrk.headers["Accept"] = accept end
else
  wrk.method = "GET"
end

-- Every response that is not 2xx is counted (wrk's own "status" error counts only
-- >= 400): bench/run.py fails a run that has any.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
  end
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"p50":%d,"p90":%d,"p99":%d,' ..
    '"max":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"non2xx":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout, bad))
end
