local s = require("sluice")
s.pipeline{name = "$name"}
s.stream("$in")
  :key_by(function(r)
    local x = 0
    for i = 1, 3000 do x = x + i end     -- slow enough to leave records in flight
    return r.value.u
  end)                                    -- op 1: $name.repartition.1
  :to("$out")
