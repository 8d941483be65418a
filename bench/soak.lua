-- wrk script for bench/soak.py: POSTs the valid bodies listed in $SOAK_BODIES (lines of
-- "<Content-Type>\t<file>") in turn; prints one JSON line of figures (latency in us).
-- wrk counts any answer other than 2xx/3xx as a status error: every one of these must be 200.
local requests = {}
local turn = 0

function init(args)
  for line in io.lines(os.getenv("SOAK_BODIES")) do
    local content_type, path = line:match("^(.-)\t(.*)$")
    local fh = assert(io.open(path, "rb"))
    local body = fh:read("*a")
    fh:close()
    requests[#requests + 1] = wrk.format(
      "POST", "/invocations", { ["Content-Type"] = content_type }, body)
  end
end

function request()
  turn = turn % #requests + 1
  return requests[turn]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests":%d,"duration_us":%d,"p50":%d,"p99":%d,"max":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
