local s = require("sluice")
s.pipeline{on_error = "$policy"}
s.stream("$in")
  :map(function(r)
    if r.value.spin then while true do end end           -- the instruction limit
    if r.value.nothing then return nil end               -- nil is an error
    if r.value.huge then return string.rep("x", 1e9) end -- the memory cap
    return {n = r.value.n, inv = 10 // r.value.d}        -- d = 0: a Lua error
  end)
  :to("$out")
