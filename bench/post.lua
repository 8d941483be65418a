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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"p50":%d,"p90":%d,"p99":%d,' ..
    '"max":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
