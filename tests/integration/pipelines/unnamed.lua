local s = require("sluice")
s.stream("$in"):map(function(r) return {n = r.value.n} end):to("$out")
