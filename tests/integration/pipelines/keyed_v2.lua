local s = require("sluice")
s.pipeline{name = "$name"}
s.stream("$in")
  :map(function(r) return {u = r.value.u, n = r.value.n, v = 2} end)
  :key_by("u")                            -- op 2: $name.repartition.2
  :to("$out")
