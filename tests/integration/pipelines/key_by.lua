local s = require("sluice")
s.stream("$in")                                           -- op 0
  :map(function(r) return {user = r.value.user, n = r.value.n} end)  -- op 1
  :key_by("user")                                         -- op 2: $name.repartition.2
  :to("$out")                                             -- op 3
