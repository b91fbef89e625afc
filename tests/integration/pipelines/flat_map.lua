local s = require("sluice")
s.stream("$in")
  :flat_map(function(r)
    local out = {}
    for w in r.value.text:gmatch("%S+") do
      out[#out + 1] = w                                  -- a string value, written as is
      out[#out + 1] = {key = w, value = {len = #w}}      -- a record table
    end
    return out                                           -- {} for an empty text
  end)
  :to("$out")
