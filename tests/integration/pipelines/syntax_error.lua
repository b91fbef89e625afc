local s = require("sluice")
s.stream("$in"):to("$out")
local broken = = 1
