-- wrk script for bench/run.py: a chat completion POST with a customer key, and one
-- machine-readable summary line at the end.
--
--   BENCH_KEY=apk_... wrk -t1 -c16 -d5s -s bench/post.lua http://127.0.0.1:PORT/v1/chat/completions
--
-- The model is gemini-3-flash, which apipod passes through unchanged; the
-- cursor-pro-sonnet alias costs the same (one dict lookup and a random draw more,
-- then the body is re-serialised), see docs/reference.md, "What the proxy does with each request".
-- The same request goes to apipod, bare mitmdump and the upstream directly; the last
-- two ignore the key.

wrk.method = "POST"
local model = os.getenv("BENCH_MODEL") or "gemini-3-flash"
wrk.body = '{"model": "' .. model .. '", "messages": [{"role": "user", "content": "Hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "none")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeouts": %d, '
      .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
