local s = require("sluice")
local src = s.stream("$in")
src:to("$out", {create = true, partitons = 2})
