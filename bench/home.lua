-- wrk script: the requests a blob's home gets while NODES nodes fill a blob of PIECES pieces
-- of 1 MiB, one piece after another: for each piece every node in turn looks it up, announces
-- it, and now and then asks for its recorded sha256 (9 : 6 : 1, about the mix the home of a
-- real 8-node fill answered).
local nodes = tonumber(os.getenv("NODES"))
local pieces = tonumber(os.getenv("PIECES"))
local digest = os.getenv("DIGEST")
local book = '"digest":"' .. digest .. '","origin":"' .. os.getenv("ORIGIN") .. '","size":'
  .. (pieces * 1048576) .. ',"layout":"fixed:1048576"'
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
local step = 0

function request()
  step = step + 1
  local node = step % nodes
  local index = math.floor(step / nodes) % pieces
  local peer = "10.1." .. math.floor(node / 250) .. "." .. (node % 250) .. ":4002"
  local kind = step % 16
  if kind < 9 then
    local body = "{" .. book .. ',"pieces":[' .. index .. '],"requester":"' .. peer .. '"}'
    return wrk.format("POST", "/v1/lookup", headers, body)
  elseif kind < 15 then
    local sha256 = string.format("%064x", index)  -- one per piece: every holder agrees
    local body = '{"holder":"' .. peer .. '","blobs":[{' .. book
      .. ',"verified":false,"pieces":{"' .. index .. '":"' .. sha256 .. '"}}]}'
    return wrk.format("POST", "/v1/announce", headers, body)
  end
  return wrk.format("POST", "/v1/recorded", headers, "{" .. book .. ',"pieces":[' .. index .. "]}")
end

function response(status, headers, body)
  -- every answer is 200, and no announcement is refused
  if status ~= 200 or string.find(body, '"refused": {"', 1, true) then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
