-- clickstream.lua - the example pipeline of `make run`.
--
-- Reads click events ({"user":..., "kind":..., "item":..., "price":...}),
-- keeps the purchases, re-keys them by item, and writes one small record per
-- purchase to `purchases_by_item`; views go to `views`. Bad records (invalid
-- JSON, a missing price) go to the dead-letter topic `clickstream.dlq`.
local s = require("sluice")
s.pipeline{name = "clickstream", on_error = "dead_letter"}

local events = s.stream("clicks", {partitions = 4})
local kinds = events:branch{
  purchase = function(r) return r.value.kind == "purchase" end,
  view = function(r) return r.value.kind == "view" end,
}

kinds.purchase
  :map(function(r)
    return {user = r.value.user, item = r.value.item, cents = math.floor(r.value.price * 100)}
  end)
  :key_by("item")
  :to("purchases_by_item", {create = true, partitions = 4})

kinds.view:to("views", {create = true, partitions = 4})
