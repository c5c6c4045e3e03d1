-- The --check conformance suite in a spec, in one line:
--
--   local conforms = require "usbd.conformance"
--   it("keeps the contract", function()
--       conforms(usbd.open_device("cryptdisk", { key = KEY }, usbd.open_device("ramdisk", { size = "4M" })))
--   end)
--
-- Runs every case of usbd-lua --check against the open device (closing it
-- at the end) and fails the test with the cases that failed and the seed
-- that replays them (usbd-lua --check --seed N ...).
local check = require "usbd.server.check"

return function(dev, opts)
    opts = opts or {}
    opts.quiet = true
    local passed, failed, failures, seed = check.device(dev, opts.name, opts)
    assert(failed == 0, ("%d of %d contract cases failed (seed %d):\n  %s")
        :format(failed, passed + failed, seed, table.concat(failures, "\n  ")))
    return passed
end
