local s = require("sluice")
s.pipeline{name = "some-other-name"}
s.stream("$in"):to("$out")
