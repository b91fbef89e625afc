-- clickstream.lua - the example pipeline of `make run`.
--
-- Reads click events ({"user":..., "kind":..., "item":..., "price":...}),
-- keeps the purchases, re-keys them by item, and writes one small record per
-- purchase to `purchases_by_item`; views go to `views`. Per user (the input
-- key) and minute, it counts purchases and sums their prices into the
-- windowed aggregate `user_spend`, whose results go to the topic of that
-- name, and which is also the feature view `user_activity` (the members over
-- the last 5 minutes and hour). The table `users` (the newest profile per
-- user, from the topic of that name) enriches each purchase with the
-- buyer's country into `purchases_enriched`. Bad records (invalid JSON, a
-- missing price) go to the dead-letter topic `clickstream.dlq`. Every
-- output, the state and the input offsets commit together (exactly once).
local s = require("sluice")
s.pipeline{name = "clickstream", on_error = "dead_letter", processing = "exactly_once"}

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

-- A stream-table join: each purchase (keyed by user) meets the user's
-- profile as it is when the purchase is processed; "left" keeps purchases
-- of users without a profile (country nil, so absent from the output).
local users = s.table("users", {partitions = 4, store = "users"})
kinds.purchase
  :join(users, function(r, user)
    return {user = r.value.user, item = r.value.item, price = r.value.price,
            country = user and user.country}
  end, {type = "left"})
  :to("purchases_enriched", {create = true, partitions = 4})

local spend = kinds.purchase
  :window(s.tumbling("1m", {grace = "10s"}))
  :aggregate{purchases = s.count(), spend = s.sum("price"), avg_price = s.avg("price"),
             store = "user_spend"}
spend:to("user_spend", {create = true, partitions = 4})

-- The same buckets as a feature view: per user, each member over the last
-- 5 minutes and the last hour (purchases_5m, spend_1h, ...), answered live
-- by FEATURES / MFEATURES and written to the topic user_activity.
spend:features("user_activity", {ranges = {"5m", "1h"}, defaults = {spend = 0}})
