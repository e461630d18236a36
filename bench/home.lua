-- wrk script: the requests a blob's home gets while NODES nodes fill a blob of PIECES pieces
-- of 1 MiB, BATCH pieces after another. For each group of BATCH pieces, every node looks them
-- up (half of them twice: the polls of a node told to wait), the node that fetched them from
-- the origin announces them, and every other node, having received them from peers, asks for
-- their recorded sha256 naming the copies it got (which records it as a holder): 9 lookups to
-- 6 sha256 queries and a few announcements. Before those queries recorded holders, the home of
-- a real 8-node fill answered 9 lookups to 6 announcements and 1 sha256 query. With BATCH 1,
-- each request asks about one piece; a busy home gets several in each (dfagent/swarm/rounds.py).
local nodes = tonumber(os.getenv("NODES"))
local pieces = tonumber(os.getenv("PIECES"))
local batch = tonumber(os.getenv("BATCH"))  -- pieces in one lookup, query or announcement
local book = '"digest":"' .. os.getenv("DIGEST") .. '","origin":"' .. os.getenv("ORIGIN")
  .. '","size":' .. (pieces * 1048576) .. ',"layout":"fixed:1048576"'
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. os.getenv("TOKEN"),
}
local queue = {}
local next_request = 1
local index = -batch

local function peer(node)
  return "10.1." .. math.floor(node / 250) .. "." .. (node % 250) .. ":4002"
end

-- The pieces of the group now asked about, each as `item` makes it, joined by commas.
local function each(item)
  local items = {}
  for i = index, index + batch - 1 do
    items[#items + 1] = item(i)
  end
  return table.concat(items, ",")
end

local function lookup(node)
  return wrk.format("POST", "/v1/lookup", headers,
    "{" .. book .. ',"pieces":[' .. each(tostring) .. '],"requester":"' .. peer(node) .. '"}')
end

local function sha256(i)  -- one per piece: every holder agrees
  return string.format("%064x", i)
end

local function holding(i)
  return '"' .. i .. '":"' .. sha256(i) .. '"'
end

-- The requests about the next group of `batch` pieces, in the order the nodes send them.
local function next_piece()
  index = (index + batch) % pieces
  queue, next_request = {}, 1
  for node = 0, nodes - 1 do
    queue[#queue + 1] = lookup(node)
  end
  for node = 0, nodes - 1, 2 do
    queue[#queue + 1] = lookup(node)
  end
  queue[#queue + 1] = wrk.format("POST", "/v1/announce", headers,
    '{"holder":"' .. peer(0) .. '","blobs":[{' .. book .. ',"verified":false,"pieces":{'
    .. each(holding) .. '}}]}')
  for node = 1, nodes - 1 do
    queue[#queue + 1] = wrk.format("POST", "/v1/recorded", headers,
      "{" .. book .. ',"pieces":[' .. each(tostring) .. '],"holder":"' .. peer(node)
      .. '","holding":{' .. each(holding) .. '}}')
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
