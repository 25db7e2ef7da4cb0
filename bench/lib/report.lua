-- wrk script for bench/api: prints one machine-readable line at the end of a run.
-- Latencies are in microseconds (wrk's unit). Requests that timed out are not in the
-- latency distribution (wrk drops them); they are counted in `timeout`.
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRK requests=%d seconds=%.3f rps=%.2f p50_us=%d p99_us=%d max_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
