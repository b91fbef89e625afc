local s = require("sluice")
s.stream("$in"):to("$out", {create = true, partitions = 2})
