local s = require("sluice")
s.pipeline{on_error = "skip"}
s.stream("$in")
  :map(function(r) return {n = r.value.n, inv = r.value.d ~= 0 and 10 // r.value.d or "none"} end)
  :to("$out")
