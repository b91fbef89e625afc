-- filter + map: big orders, two outputs from one stream.
-- $in, $by_value, $by_user are filled in by test_pipelines.py.
local s = require("sluice")
local orders = s.stream("$in")
local big = orders:filter(function(r) return r.value.amount > 100 end)
-- a plain value: the output keeps the input's key, ts and headers
big:map(function(r)
  return {user = r.value.user, double = r.value.amount * 2, label = "user:" .. r.value.id}
end):to("$by_value")
-- a record table: new key; {value = obj} wraps an object shaped like a record
big:map(function(r)
  return {key = r.value.user, value = {key = "k", value = r.value.amount}}
end):to("$by_user")
