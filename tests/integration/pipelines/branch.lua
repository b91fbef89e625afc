local s = require("sluice")
-- names are tried in byte order: "big" before "eu", whatever the table says
local b = s.stream("$in"):branch{
  eu = function(r) return r.value.region == "eu" end,
  big = function(r) return r.value.amount > 100 end,
}
b.big:to("$big")
b.eu:to("$eu")
