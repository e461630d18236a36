-- wrk script: the requests a blob's home gets while NODES nodes fill a blob of PIECES pieces
-- of 1 MiB, one piece after another. For each piece, every node looks it up (half of them
-- twice: the polls of a node told to wait), the node that fetched it from the origin
-- announces it, and every other node, having received it from a peer, asks for its recorded
-- sha256 naming the copy it got (which records it as a holder): 9 lookups to 6 sha256 queries
-- and a few announcements. Before those queries recorded holders, the home of a real 8-node
-- fill answered 9 lookups to 6 announcements and 1 sha256 query.
local nodes = tonumber(os.getenv("NODES"))
local pieces = tonumber(os.getenv("PIECES"))
local book = '"digest":"' .. os.getenv("DIGEST") .. '","origin":"' .. os.getenv("ORIGIN")
  .. '","size":' .. (pieces * 1048576) .. ',"layout":"fixed:1048576"'
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
local queue = {}
local next_request = 1
local index = -1

local function peer(node)
  return "10.1." .. math.floor(node / 250) .. "." .. (node % 250) .. ":4002"
end

local function lookup(node)
  return wrk.format("POST", "/v1/lookup", headers,
    "{" .. book .. ',"pieces":[' .. index .. '],"requester":"' .. peer(node) .. '"}')
end

-- The requests about the next piece, in the order the nodes send them.
local function next_piece()
  index = (index + 1) % pieces
  queue, next_request = {}, 1
  for node = 0, nodes - 1 do
    queue[#queue + 1] = lookup(node)
  end
  for node = 0, nodes - 1, 2 do
    queue[#queue + 1] = lookup(node)
  end
  local sha256 = string.format("%064x", index)  -- one per piece: every holder agrees
  queue[#queue + 1] = wrk.format("POST", "/v1/announce", headers,
    '{"holder":"' .. peer(0) .. '","blobs":[{' .. book .. ',"verified":false,"pieces":{"'
    .. index .. '":"' .. sha256 .. '"}}]}')
  for node = 1, nodes - 1 do
    queue[#queue + 1] = wrk.format("POST", "/v1/recorded", headers,
      "{" .. book .. ',"pieces":[' .. index .. '],"holder":"' .. peer(node)
      .. '","holding":{"' .. index .. '":"' .. sha256 .. '"}}')
  end
end

function request()
  if next_request > #queue then
    next_piece()
  end
  next_request = next_request + 1
  return queue[next_request - 1]
end

function response(status, headers, body)
  -- every answer is 200, no announcement is refused and every copy named is recorded
  if status ~= 200 or string.find(body, '"refused": {"', 1, true)
    or string.find(body, '"held": []', 1, true) then
    io.stderr:write("unexpected status " .. status .. ": " .. body .. "\n")
  end
end
