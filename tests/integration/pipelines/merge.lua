local s = require("sluice")
local a = s.stream("$a"):map(function(r) return {from = "a", n = r.value.n} end)
local b = s.stream("$b"):map(function(r) return {from = "b", n = r.value.n} end)
s.merge(a, b):peek(function(r) return nil end):to("$out")
