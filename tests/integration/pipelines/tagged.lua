local s = require("sluice")
s.pipeline{name = "$name", on_error = "skip"}
s.stream("$in"):map(function(r) return {n = r.value.n, version = "$version"} end):to("$out")
