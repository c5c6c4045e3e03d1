-- Opening devices, alone or stacked, and reading what they offer (the
-- device contract: docs/api.md). Every failure is one line that says
-- what to fix.
--
--   device.open("filedisk", { path = "disk.img" })            -- a shipped device
--   device.open("mydisk.lua", { size = "1G" })                 -- a script
--   device.open("cryptdisk", { keyfile = "k" }, base)          -- a transform on base
--   device.open("mirror", {}, { a, b })                        -- a device on several
--   device.open_stack("mirror", { "[", "filedisk", "path=a", "]", "[", "filedisk", "path=b", "]" })
--
-- A device script returns { open = function(args, base) ... end, params =
-- {...}, transform = true|nil, bases = N|{ min =, max = }|nil }. params
-- declares the keys open takes (a list of names, or name -> description):
-- any other key is an error naming it, and usbd-lua --help DEVICE shows
-- them (M.help). A transform stands on another device, handed to open as
-- base; a device that declares bases stands on several, handed to open as
-- a list (docs/api.md).
local ffi = require "ffi"

local M = {}

local last_failure  -- the last message fail() raised: a nested open's, passed on as it is
local function fail(fmt, ...)
    last_failure = fmt:format(...)
    error(last_failure, 0)
end

local function first_line(msg)
    return (tostring(msg):gsub("\n.*", ""))
end

-- Where the runtime's own tree is: lua/usbd/device.lua lives in ROOT/lua,
-- shipped devices in ROOT/devices and ROOT/examples (the repository, or
-- DATADIR once installed).
local ROOT = (package.searchpath("usbd.device", package.path) or "lua/usbd/device.lua")
    :match("^(.-)/?lua/usbd/device%.lua$")
if ROOT == "" then ROOT = "." end
M.ROOT = ROOT

-- Whether path names something that can be opened for reading (a file, a
-- block device). Also usbd.exists, for device scripts.
function M.exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end
local exists = M.exists

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- "./a/./b.lua" and "a/b.lua" name one file: the key for loop detection.
local function clean(path)
    path = path:gsub("/%./", "/"):gsub("^%./", "")
    return path
end

local opening = {}  -- scripts whose open() is running, outermost first

-- The device a name or path means. A bare name (filedisk) is a shipped
-- device; a path is tried against from_dir (the calling script's directory,
-- or the current one on the command line), then the shipped tree.
function M.resolve(spec, from_dir)
    local tried = {}
    local function try(path)
        path = clean(path)
        tried[#tried + 1] = path
        return exists(path) and path or nil
    end
    if spec:sub(1, 1) == "/" then
        return try(spec) or fail("no device script %s", spec)
    end
    local is_path = spec:find("/", 1, true) or spec:match("%.lua$")
    local file = spec:match("%.lua$") and spec or spec .. ".lua"
    local base = file:match("[^/]*$")
    local found = (is_path and try((from_dir or ".") .. "/" .. spec))
        or (is_path and try(ROOT .. "/" .. spec))
        or try(ROOT .. "/devices/" .. base)
        or try(ROOT .. "/examples/" .. base)
    if found then return found end
    fail("no device '%s': tried %s", spec, table.concat(tried, ", "))
end

-- A short name for messages: "ramdisk" for .../devices/ramdisk.lua.
local function short(path)
    return (path:match("([^/]*)%.lua$") or path)
end

local function load_module(path)
    local chunk, err = loadfile(path)
    if not chunk then
        fail("cannot load device script: %s", err)
    end
    local ok, mod = pcall(chunk)
    if not ok then
        fail("device script %s failed while loading: %s", path, first_line(mod))
    end
    if type(mod) ~= "table" or type(mod.open) ~= "function" then
        fail("%s must return a table with an open(args) function", path)
    end
    return mod
end

-- The keys a script declares, as a set; nil if it declares none.
local function declared(mod)
    if mod.params == nil then return nil end
    local set = {}
    for k, v in pairs(mod.params) do
        set[type(k) == "number" and v or k] = true
    end
    return set
end

-- How many devices mod stands on: min, max (max nil: any number).
local function base_count(mod)
    if mod.transform then return 1, 1 end
    local b = mod.bases
    if b == nil then return 0, 0 end
    if type(b) == "number" then return b, b end
    return b.min or 1, b.max
end

local function count_text(min, max)
    if max == min then return tostring(min) end
    if max == nil then return ("%d or more"):format(min) end
    return ("%d to %d"):format(min, max)
end

-- A list of bases (as opposed to one device): a plain table of devices.
local function is_list(base)
    return type(base) == "table" and getmetatable(base) == nil and base.read_at == nil
end

-- One line when n devices cannot stand below mod.
local function check_count(name, spec, mod, n)
    local min, max = base_count(mod)
    if n >= min and (max == nil or n <= max) then return end
    if mod.transform and n == 0 then
        fail("%s is a transform and needs a device below it: usbd-lua %s KEY=VALUE... -- filedisk path=disk.img",
            name, spec)
    elseif min == 0 and max == 0 then
        fail("%s does not stand on another device: nothing can go below it", name)
    end
    fail("%s stands on %s devices, got %d: usbd-lua %s KEY=VALUE... [ DEVICE KEY=VALUE... ] [ DEVICE KEY=VALUE... ]",
        name, count_text(min, max), n, spec)
end

local function check_keys(name, mod, args)
    local keys = declared(mod)
    if not keys then
        return
    end
    local unknown = {}
    for k in pairs(args) do
        if not keys[k] then unknown[#unknown + 1] = tostring(k) end
    end
    if #unknown == 0 then return end
    table.sort(unknown)
    local takes = {}
    for k in pairs(keys) do takes[#takes + 1] = k end
    table.sort(takes)
    local hint = ""
    if mod.transform and (args.base or args.path) then  -- meant for the layer below
        hint = ": a device below goes after this one's arguments on the command line"
            .. " (usbd-lua " .. name .. " KEY=VALUE -- filedisk path=...)"
    end
    fail("unknown parameter%s %s for %s (it takes %s)%s", #unknown > 1 and "s" or "",
        "'" .. table.concat(unknown, "', '") .. "'", name,
        #takes > 0 and table.concat(takes, ", ") or "no parameters", hint)
end

-- Open the device spec names (see resolve) with its own args, on base if
-- it is a transform. from_dir defaults to the directory of the script that
-- calls this.
function M.open(spec, args, base, from_dir)
    args = args or {}
    if not from_dir then
        -- The calling script's directory. A tail call (return
        -- usbd.open_device(...)) leaves no frame of the caller: then the
        -- script whose open() is running is the caller.
        local src = debug.getinfo(2, "S").source
        if src:sub(1, 1) == "@" and not src:match("lua/usbd/[^/]*%.lua$") then
            from_dir = dirname(src:sub(2))
        elseif #opening > 0 then
            from_dir = dirname(opening[#opening])
        else
            from_dir = "."
        end
    end
    local path = M.resolve(spec, from_dir)
    local name = short(path)
    for i, p in ipairs(opening) do
        if p == path or #opening >= 32 then
            local chain = {}
            for j = i, #opening do chain[#chain + 1] = short(opening[j]) end
            chain[#chain + 1] = name
            fail("%s opens itself: a device cannot stand on itself (%s)", name, table.concat(chain, " -> "))
        end
    end
    local mod = load_module(path)
    check_keys(name, mod, args)
    -- A transform gets its base; a device on several gets a list.
    local bases = base == nil and {} or is_list(base) and base or { base }
    check_count(name, spec, mod, #bases)
    if mod.transform then base = bases[1] elseif #bases > 0 then base = bases else base = nil end
    opening[#opening + 1] = path
    local ok, dev = pcall(mod.open, args, base)
    opening[#opening] = nil
    if not ok then
        if dev == last_failure then
            error(dev, 0)  -- a nested open's: it already says where
        end
        fail("%s: open failed: %s", path, first_line(dev))
    end
    if type(dev) ~= "table" and type(dev) ~= "userdata" then
        fail("%s: open(args) must return the device object, got %s", path, type(dev))
    end
    for _, method in ipairs { "size", "read_at" } do
        if type(dev[method]) ~= "function" then
            fail("%s: the device has no %s() method, which every device needs", path, method)
        end
    end
    return dev
end

-- The command line's tree: SCRIPT then words. KEY=VALUE belongs to the
-- device before it; any other word names the device below it (a chain,
-- "--" may separate the two for the reader); "[ ... ]" groups give a
-- device several devices below it, each group a tree of its own:
--
--   mirror -- [ filedisk path=a.img ] [ faultdisk ops=read -- filedisk path=b.img ]
--
-- Returns { spec =, args =, bases = { node, ... } }, the top.
function M.parse_tree(script, words)
    local i = 1
    local function node(spec)
        return { spec = spec, args = {}, bases = {} }
    end
    -- A chain from words[i] on, up to its "]" (inside a group) or the end.
    local function chain(top, in_group)
        local cur = top
        while true do
            local w = words[i]
            i = i + 1
            if w == nil then
                if in_group then fail("a '[' is not closed: end each group of devices with ']'") end
                return top
            end
            local key, value = w:match("^([^=]+)=(.*)$")
            if w == "]" then
                if not in_group then fail("a ']' closes no '[': groups of devices are [ DEVICE KEY=VALUE... ]") end
                return top
            elseif w == "--" then
                -- a separator for the reader: the next word names a device
            elseif w == "[" then
                local first = words[i]
                if first == nil or first == "]" or first == "[" or first:find("=", 1, true) or first == "--" then
                    fail("each [ ] group of devices starts with a device's name, got %s",
                        first and ("'" .. first .. "'") or "the end of the line")
                end
                i = i + 1
                cur.bases[#cur.bases + 1] = chain(node(first), true)
            elseif #cur.bases > 0 then
                fail("'%s' after the [ ] groups of %s: its KEY=VALUE go before them, and a device below goes in a group",
                    w, short(cur.spec))
            elseif key then
                if cur.args[key] ~= nil then
                    fail("%s= is given twice for %s", key, short(cur.spec))
                end
                cur.args[key] = value
            elseif w:sub(1, 1) == "-" or w:sub(1, 1) == "=" then
                fail("'%s' is not KEY=VALUE nor a device: options go before the device", w)
            else
                local below = node(w)
                cur.bases[1] = below
                cur = below
            end
        end
    end
    return chain(node(script), false)
end

-- The tree's nodes, each before those below it.
function M.nodes(tree, out)
    out = out or {}
    out[#out + 1] = tree
    for _, b in ipairs(tree.bases) do M.nodes(b, out) end
    return out
end

-- What usbd-lua --help DEVICE prints: the first sentence of a script's
-- header comment (without its "name.lua: "), nil if it has none.
local function summary(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local lines = {}
    for line in f:lines() do
        local text = line:match("^%-%-%-*%s?(.*)$")
        if not (#lines == 0 and line:match("^#!")) then
            if not text or text:match("^%s*$") then break end  -- the first paragraph ends
            lines[#lines + 1] = text
        end
    end
    f:close()
    if #lines == 0 then return nil end
    local text = table.concat(lines, " "):gsub("^[%w_.-]+%.lua:%s*", "")
    return text:match("^(.-%.)%s") or text
end

-- words as lines of at most width columns, the first after lead, the rest
-- after indent.
local function wrap(words, lead, indent, width)
    local out, line = {}, lead
    for word in words:gmatch("%S+") do
        if #line > #indent and #line + 1 + #word > width and line ~= lead then
            out[#out + 1] = line
            line = indent .. word
        elseif line == lead or line == indent then
            line = line .. word
        else
            line = line .. " " .. word
        end
    end
    out[#out + 1] = line
    return table.concat(out, "\n") .. "\n"
end

-- The text --help DEVICE prints for the script at path: what it is, how it
-- goes on the command line, and the keys its params declare with their
-- descriptions, sorted.
function M.help(path)
    local mod = load_module(path)
    local name = short(path)
    local out = {}
    local what = summary(path)
    out[#out + 1] = wrap(what and name .. ": " .. what or name, "", "", 79) .. "\n"
    local min, max = base_count(mod)
    if mod.transform then
        out[#out + 1] = ("usage: usbd-lua [OPTIONS] %s [/dev/nbdN] [KEY=VALUE ...] -- DEVICE [KEY=VALUE ...]\n"
            .. "%s is a transform: it stands on the DEVICE named after it.\n"):format(name, name)
    elseif min > 0 or (max or 1) > 0 then
        out[#out + 1] = ("usage: usbd-lua [OPTIONS] %s [/dev/nbdN] [KEY=VALUE ...] [ DEVICE [KEY=VALUE ...] ] ...\n"
            .. "%s stands on %s devices, each named in a [ ] group (which may hold a stack or a tree).\n")
            :format(name, name, count_text(min, max))
    else
        out[#out + 1] = ("usage: usbd-lua [OPTIONS] %s [/dev/nbdN] [KEY=VALUE ...]\n"):format(name)
    end
    -- Installed, the runtime is found from the binary as bin/../share.
    local shown, n = path, 1
    while n > 0 do shown, n = shown:gsub("/[^/]+/%.%./", "/", 1) end
    out[#out + 1] = "script: " .. shown .. "\n\n"
    if mod.params == nil then
        out[#out + 1] = "It declares no params: every KEY=VALUE reaches its open(args).\n"
        return table.concat(out)
    end
    local keys, width = {}, 0
    for k, v in pairs(mod.params) do
        local key, text = k, v
        if type(k) == "number" then key, text = v, "" end
        keys[#keys + 1] = { key = tostring(key), text = tostring(text) }
        width = math.max(width, #tostring(key))
    end
    if #keys == 0 then
        out[#out + 1] = "It takes no KEY=VALUE pairs.\n"
        return table.concat(out)
    end
    table.sort(keys, function(a, b) return a.key < b.key end)
    out[#out + 1] = "KEY=VALUE pairs:\n"
    for _, k in ipairs(keys) do
        local lead = ("  %-" .. width .. "s  "):format(k.key)
        out[#out + 1] = k.text == "" and lead:gsub("%s+$", "") .. "\n"
            or wrap(k.text, lead, (" "):rep(#lead), 79)
    end
    return table.concat(out)
end

-- Open the command line's tree, the devices below first; returns the top
-- device. Every name and every count of devices below is checked before
-- any device opens.
function M.open_stack(script, words)
    local tree = M.parse_tree(script, words)
    local nodes = M.nodes(tree)
    local above = {}
    for _, n in ipairs(nodes) do
        for _, b in ipairs(n.bases) do above[b] = n end
    end
    for _, n in ipairs(nodes) do
        local ok, path = pcall(M.resolve, n.spec, ".")
        if not ok and above[n] then
            fail("'%s' is not KEY=VALUE (like size=1G) nor a device below %s (%s)",
                n.spec, short(above[n].spec), path)
        elseif not ok then
            error(path, 0)
        end
        n.path = path
    end
    for _, n in ipairs(nodes) do
        local path = n.path
        local mod = load_module(path)
        local min, max = base_count(mod)
        if #n.bases > 0 and min == 0 and max == 0 then
            fail("%s does not stand on another device: %s cannot go below it", short(path), n.bases[1].spec)
        end
        check_keys(short(path), mod, n.args)
        check_count(short(path), n.spec, mod, #n.bases)
    end
    -- Bottom up; a failed open closes what opened beside and below it.
    local function open(n)
        local bases = {}
        local function give_up(err)
            for j = #bases, 1, -1 do
                if bases[j].close then pcall(bases[j].close, bases[j]) end
            end
            error(err, 0)
        end
        for _, b in ipairs(n.bases) do
            local ok, dev = pcall(open, b)
            if not ok then give_up(dev) end
            bases[#bases + 1] = dev
        end
        local ok, dev = pcall(M.open, n.spec, n.args, #bases > 0 and bases or nil, ".")
        if not ok then give_up(dev) end
        return dev
    end
    return open(tree)
end

local function is_power_of_two(n)
    return n >= 1 and n == math.floor(n) and bit.band(n, n - 1) == 0
end

-- Whether size() gave a size the server can serve: a whole number of bytes.
function M.whole_bytes(size)
    return type(size) == "number" and size >= 0 and size == math.floor(size)
end

-- What the core needs to know to serve dev: a usbd_export.
function M.describe(script, dev, readonly)
    local size = dev:size()
    if not M.whole_bytes(size) then
        fail("%s: size() must return a whole number of bytes, got %s", script, tostring(size))
    end
    local block_size = dev.block_size and dev:block_size() or 512
    if type(block_size) ~= "number" or not is_power_of_two(block_size)
            or block_size < 512 or block_size > 65536 then
        fail("%s: block_size() must be a power of two from 512 to 65536, got %s", script, tostring(block_size))
    end
    local writable = dev.write_at ~= nil and not readonly
    return ffi.new("usbd_export", {
        size = size,
        block_size = block_size,
        can_write = writable,
        can_trim = writable and dev.trim ~= nil,
        can_zero = writable and dev.write_zeroes ~= nil,
        can_flush = dev.flush ~= nil,
        -- One device object serves every connection in this process, so a
        -- flush on any connection covers writes acknowledged on all.
        can_multi_conn = true,
    })
end

return M
