-- wrk script: the question every node asks a blob's home first, the blob's size and how it is
-- cut (GET /v1/blobs/<digest>): in a fill of N nodes, N of them at once.
local path = "/v1/blobs/sha256:" .. os.getenv("DIGEST") .. "?origin=" .. os.getenv("ORIGIN")
local headers = {["Authorization"] = "Bearer " .. os.getenv("TOKEN")}
request = function()
  return wrk.format("GET", path, headers)
end
response = function(status, headers, body)
  if status ~= 200 then
    wrk.thread:stop()
  end
end
