-- Serves pre-signed requests from a file written by run.py, one line per request:
-- path \t delivery id \t signature \t timestamp \t body. Each wrk thread takes every n-th line,
-- so no two threads send the same delivery. An optional per-connection delay paces the load.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file = os.getenv("ESCALIER_POOL")
  local total = tonumber(os.getenv("ESCALIER_THREADS") or "1")
  pace = tonumber(os.getenv("ESCALIER_DELAY_MS") or "0")
  pool = {}
  local n = 0
  for line in io.lines(file) do
    if n % total == index then
      local path, delivery, signature, stamp, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-Zendesk-Webhook-Invocation-Id"] = delivery,
        ["X-Zendesk-Webhook-Signature"] = signature,
        ["X-Zendesk-Webhook-Signature-Timestamp"] = stamp,
      }
      table.insert(pool, wrk.format("POST", path, headers, body))
    end
    n = n + 1
  end
  position = 0
  wrapped = 0
end

function request()
  position = position + 1
  if position > #pool then
    position = 1
    wrapped = wrapped + 1
  end
  return pool[position]
end

function delay()
  return pace
end

-- How many times a thread ran out of pool and started over: its requests after that repeat
-- deliveries, which the receiver answers as cheap duplicates.
function total_wrapped()
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("wrapped") or 0)
  end
  return total
end

function done(summary, latency, requests)
  io.write(string.format(
    "ESCALIER_RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"non_2xx\": %d, \"socket_errors\": %d, \"wrapped\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout, total_wrapped()))
end
