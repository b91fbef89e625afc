-- started by `sluice run`: the name is set here, the sink created if missing
local s = require("sluice")
s.pipeline{name = "$name", on_error = "skip"}
s.stream("$in")
  :filter(function(r) return r.value.ok end)
  :map(function(r) return {id = r.value.id, seen = true} end)
  :to("$out", {create = true})
