-- wrk script for scripts/bench.py:
--   wrk ... -s scripts/bench/wrk.lua URL -- get IDS_FILE   GET /data/{id} over the ids in the file
--   wrk ... -s scripts/bench/wrk.lua URL -- post           POST /data with a typical value
-- At the end it prints one JSON line with the counts and latency percentiles (µs).

local mode = "get"
local ids = {}

function init(args)
  mode = args[1] or "get"
  if mode == "get" then
    for line in io.lines(args[2]) do
      ids[#ids + 1] = line
    end
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  else
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = '{"value":"a value of a typical length for the benchmark"}'
  end
end

function request()
  if mode == "get" then
    return wrk.format("GET", "/data/" .. ids[math.random(#ids)])
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
