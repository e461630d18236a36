-- wrk script: one random `Range: bytes=a-b` of RANGE_LEN bytes per request, for TARGET
-- (an absolute URL when talking to a proxy, a path when talking to a server).
local size = tonumber(os.getenv("BLOB_SIZE"))
local length = tonumber(os.getenv("RANGE_LEN"))
local target = os.getenv("TARGET")
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + seed)
end

function request()
  local first = math.random(0, size - length)
  return wrk.format("GET", target, { ["Range"] = "bytes=" .. first .. "-" .. (first + length - 1) })
end

function response(status, headers, body)
  if status ~= 206 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
