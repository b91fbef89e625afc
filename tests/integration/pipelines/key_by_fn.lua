local s = require("sluice")
s.stream("$in")
  :key_by(function(r) return "user-" .. r.value.id end)
  :to("$out", {create = true, partitions = 3})
