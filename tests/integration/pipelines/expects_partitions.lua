local s = require("sluice")
s.stream("$in", {partitions = 3}):to("$out")
