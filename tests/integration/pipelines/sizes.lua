local s = require("sluice")
s.pipeline{on_error = "dead_letter", processing = "$processing"}
s.stream("$in")
  :flat_map(function(r)
    if r.value.big then return {string.rep("x", r.value.big)} end  -- over max.batch.bytes
    local out = {}
    for i = 1, r.value.many do out[i] = {i = i, pad = string.rep("p", 200)} end
    return out                                                       -- many batches' worth
  end)
  :to("$out")
