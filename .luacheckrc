-- luacheck's settings (tests/lint.sh runs it over lua devices examples
-- tools spec bench; make test runs that as a suite).
std = "luajit"
-- The code's own width: a few long lines are a string or a call that
-- reads better whole.
max_line_length = 130
-- Methods that ignore their object (Ramdisk:flush() with nothing to do)
-- keep the contract's shape: the implicit self may go unused.
self = false

ignore = {
    -- An empty branch with a comment names a case that needs nothing done
    -- (a "--" between layers, a header guard's #define), so that the
    -- branches after it do not take it.
    "542",
}

-- busted's globals (describe, it, assert.are...).
files["spec/"] = { std = "+busted" }

-- bench/run.sh runs report.lua with luajit or any lua: it may use
-- table.unpack where there is no unpack.
files["bench/report.lua"] = { std = "max" }

-- A plugin for nbdkit's Lua plugin (Lua 5.x, not LuaJIT): nbdkit calls
-- these global functions by name, each with its fixed arguments, used or not.
files["bench/nbdkit-ramdisk.lua"] = {
    std = "max",
    globals = { "config", "config_complete", "open", "get_size", "can_write", "pread", "pwrite",
        "can_flush", "flush", "can_trim", "trim", "zero" },
    unused_args = false,
}

