-- wrk: a different user id on every request, so nginx hashes real keys.
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["X-User-Id"] = "user-" .. counter})
end
