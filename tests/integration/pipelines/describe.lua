local s = require("sluice")
s.pipeline{on_error = "skip"}
s.stream("$in")
  :filter(function(r) return r.value.n % 2 == 0 end)
  :map(function(r)
    if r.value.n == 4 then error("four is not welcome") end
    return {half = r.value.n // 2}
  end)
  :to("$out")
