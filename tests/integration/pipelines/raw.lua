local s = require("sluice")
s.stream("$in", {format = "raw"})
  :map(function(r) return r.value:upper() end)   -- a string: written as is
  :to("$out")
