-- wrk: a different user id on every request, one request per connection.
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["X-User-Id"] = "user-" .. counter, ["Connection"] = "close"})
end
