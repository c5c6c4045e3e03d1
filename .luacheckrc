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

-- Being rewritten elsewhere, and not edited here: what they still warn of,
-- exactly, so that a new warning in them still fails the lint.
files["devices/dedupdisk.lua"] = {
    ignore = {
        "211/u64p", -- unused variable
        "421/p",    -- shadowing a local
        "422/k",    -- shadowing an argument
        "631",      -- lines 2072 and 2116 are longer than 130
    },
}
files["lua/usbd/dedup/journal.lua"] = {
    ignore = {
        "431/runs", -- shadowing an upvalue
        "311/n",    -- a value overwritten before use
    },
}
files["tools/dedup-fsck.lua"] = {
    ignore = {
        "631",      -- lines 163, 273 and 278 are longer than 130
    },
}
