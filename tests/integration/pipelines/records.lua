local s = require("sluice")
local json = require("json")
-- event time from the value; a record table with headers and a number key
s.stream("$in", {timestamp = function(r) return r.value.at end})
  :map(function(r)
    return {key = r.value.id, value = {id = r.value.id, was = r.headers.trace or json.null},
            headers = {zeta = "z", alpha = 1, trace = r.headers.trace}}
  end)
  :to("$out")
