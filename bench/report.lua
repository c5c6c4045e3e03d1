-- report.lua: the numbers side of bench/run.sh (runs under luajit or lua 5.1+).
--
--   luajit bench/report.lua fio FILE.json   -> "MIBS IOPS IOS SECONDS" (read+write
--                                              summed; IOS the requests done in
--                                              SECONDS), or
--                                              an error on stderr and exit 1
--   luajit bench/report.lua table LOG       -> the result tables on stdout
--
-- LOG is written by run.sh, one tab-separated record per line:
--   header  TEXT
--   group   G  DESC
--   server  G  ID  LABEL  STATE(ok|skip|fail)  CMD-or-REASON
--   job     G  ID  DESC
--   note    G  TEXT
--   result  G  JOB  SERVER  ROUND  MIBS  IOPS  IOS  CPU  LUA  SECONDS
--           (MIBS = FAIL when the run failed; CPU: the server's seconds of
--           CPU over the run, LUA its Lua thread's, - where unknown)
--   cost    G  JOB  SERVER  REF  LABEL  MIBS
--           on JOB, SERVER does REF's work plus LABEL's, which alone runs at
--           MIBS: its ceiling is 1 / (1/REF + 1/MIBS), one after the other
-- The first server of a group is the subject; ratios are subject / each other.

local unpack = unpack or table.unpack

---------------------------------------------------------------------------
-- A small JSON reader: enough for fio's output (objects, arrays, strings,
-- numbers, true/false/null, and the odd nan/inf fio may print).
---------------------------------------------------------------------------
local function json_decode(s)
  local pos = 1
  local function fail(msg)
    error(("JSON: %s at byte %d"):format(msg, pos), 0)
  end
  local function skip()
    pos = s:find("[^ \t\r\n]", pos) or #s + 1
  end
  local value
  local escapes = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function str()
    pos = pos + 1                         -- opening quote
    local parts = {}
    while true do
      local a, b = s:find('["\\]', pos)
      if not a then fail("unterminated string") end
      parts[#parts + 1] = s:sub(pos, a - 1)
      if s:sub(a, a) == '"' then pos = a + 1; break end
      local e = s:sub(b + 1, b + 1)
      if e == "u" then
        local code = tonumber(s:sub(b + 2, b + 5), 16) or fail("bad \\u escape")
        parts[#parts + 1] = code < 128 and string.char(code) or "?"
        pos = b + 6
      else
        parts[#parts + 1] = escapes[e] or e
        pos = b + 2
      end
    end
    return table.concat(parts)
  end
  function value()
    skip()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1; skip()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        skip()
        if s:sub(pos, pos) ~= '"' then fail("expected key") end
        local k = str()
        skip()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value()
        skip()
        c = s:sub(pos, pos); pos = pos + 1
        if c == "}" then return obj end
        if c ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = {}
      pos = pos + 1; skip()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr[#arr + 1] = value()
        skip()
        c = s:sub(pos, pos); pos = pos + 1
        if c == "]" then return arr end
        if c ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    else
      local word = s:match("^[%w%.%+%-]+", pos)
      if not word then fail("unexpected character '" .. c .. "'") end
      pos = pos + #word
      if word == "true" then return true end
      if word == "false" then return false end
      if word == "null" then return nil end
      local n = tonumber(word)
      if n then return n end
      if word:lower():find("nan") or word:lower():find("inf") then return 0 / 0 end
      fail("bad literal '" .. word .. "'")
    end
  end
  -- fio may print warnings before the JSON object; start at the first '{'.
  pos = s:find("{", 1, true) or fail("no JSON object")
  return value()
end

local function fio_summary(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  local ok, doc = pcall(json_decode, text)
  if not ok then return nil, path .. ": " .. doc end
  local jobs = doc.jobs
  if type(jobs) ~= "table" or #jobs == 0 then return nil, path .. ": no jobs" end
  local bw, iops, ios, ms = 0, 0, 0, 0
  for _, job in ipairs(jobs) do
    ms = math.max(ms, tonumber(job.job_runtime) or 0)
    if (job.error or 0) ~= 0 then
      return nil, ("%s: job %s error %s"):format(path, tostring(job.jobname), tostring(job.error))
    end
    for _, dir in ipairs({ "read", "write", "trim" }) do
      local d = job[dir]
      if d then
        bw = bw + (d.bw_bytes or 0)
        iops = iops + (d.iops or 0)
        ios = ios + (d.total_ios or 0)
      end
    end
  end
  if bw <= 0 then return nil, path .. ": no I/O done" end
  return bw / 1048576, iops, ios, ms / 1000
end

---------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------
local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return (s[n / 2] + s[n / 2 + 1]) / 2
end

local function split_tabs(line)
  local f = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do f[#f + 1] = field end
  return f
end

local function fmt_num(x)
  if x == nil then return "-" end
  if x >= 100 then return ("%.0f"):format(x) end
  if x >= 10 then return ("%.1f"):format(x) end
  return ("%.2f"):format(x)
end

-- A job's results on one server: each round's MiB/s, IOPS, CPU per request
-- (us) and Lua thread share (%), and how many rounds failed.
local function no_result() return { mibs = {}, iops = {}, cpu = {}, lua = {}, fails = 0 } end

local function print_table(log_path)
  local out = {}
  local function say(fmt, ...) out[#out + 1] = fmt:format(...) end

  local headers, groups, byid = {}, {}, {}
  for line in io.lines(log_path) do
    local f = split_tabs(line)
    local kind, g = f[1], f[2]
    if kind == "header" then
      headers[#headers + 1] = f[2]
    elseif kind ~= "" and g then
      local G = byid[g]
      if not G then
        G = { id = g, desc = "", servers = {}, srv = {}, jobs = {}, job = {}, notes = {}, res = {}, costs = {} }
        byid[g] = G
        groups[#groups + 1] = G
      end
      if kind == "group" then
        G.desc = f[3] or ""
      elseif kind == "server" then
        local s = { id = f[3], label = f[4], state = f[5], info = f[6] or "" }
        G.servers[#G.servers + 1] = s
        G.srv[s.id] = s
      elseif kind == "job" then
        local j = { id = f[3], desc = f[4] }
        G.jobs[#G.jobs + 1] = j
        G.job[j.id] = j
      elseif kind == "note" then
        G.notes[#G.notes + 1] = f[3]
      elseif kind == "cost" then
        G.costs[#G.costs + 1] = { job = f[3], server = f[4], ref = f[5], label = f[6], mibs = tonumber(f[7]) }
      elseif kind == "result" then
        local key = f[3] .. "\0" .. f[4]
        local r = G.res[key] or no_result()
        G.res[key] = r
        if f[6] == "FAIL" then
          r.fails = r.fails + 1
        else
          r.mibs[#r.mibs + 1] = tonumber(f[6])
          r.iops[#r.iops + 1] = tonumber(f[7])
          local ios, cpu = tonumber(f[8]), tonumber(f[9])
          if ios and ios > 0 and cpu then r.cpu[#r.cpu + 1] = 1e6 * cpu / ios end
          local lua, secs = tonumber(f[10]), tonumber(f[11])
          if lua and secs and secs > 0 then r.lua[#r.lua + 1] = 100 * lua / secs end
        end
      end
    end
  end

  for _, h in ipairs(headers) do say("%s", h) end

  for _, G in ipairs(groups) do
    say("")
    say("[%s] %s", G.id, G.desc)
    local lw = 6
    for _, s in ipairs(G.servers) do if #s.label > lw then lw = #s.label end end
    for _, s in ipairs(G.servers) do
      local state = s.state == "ok" and "" or (s.state == "skip" and "SKIPPED: " or "FAILED: ")
      say("  %-" .. lw .. "s  %s%s", s.label, state, s.info)
    end
    for _, n in ipairs(G.notes) do say("  %s", n) end

    local jw = 3
    for _, j in ipairs(G.jobs) do if #j.desc > jw then jw = #j.desc end end
    local live = {}
    for _, s in ipairs(G.servers) do
      if s.state == "ok" then live[#live + 1] = s end
    end

    say("")
    say("  %-" .. jw .. "s  %-" .. lw .. "s  %9s  %9s  %6s  %8s  %4s  %s",
        "job", "server", "MiB/s", "IOPS", "spread", "CPU/req", "Lua", "runs")
    local med = {}                        -- med[job][server] = median IOPS
    local cpu = {}                        -- cpu[job][server] = median CPU us per request
    for _, j in ipairs(G.jobs) do
      med[j.id], cpu[j.id] = {}, {}
      for i, s in ipairs(live) do
        local r = G.res[j.id .. "\0" .. s.id] or no_result()
        local m_bw, m_iops, m_cpu, m_lua = median(r.mibs), median(r.iops), median(r.cpu), median(r.lua)
        med[j.id][s.id], cpu[j.id][s.id] = m_iops, m_cpu
        local spread = "-"
        if m_bw and m_bw > 0 and #r.mibs > 1 then
          spread = ("%.0f%%"):format(100 * (math.max(unpack(r.mibs)) - math.min(unpack(r.mibs))) / m_bw)
        end
        local runs = tostring(#r.mibs)
        if r.fails > 0 then runs = runs .. (" (%d FAILED)"):format(r.fails) end
        say("  %-" .. jw .. "s  %-" .. lw .. "s  %9s  %9s  %6s  %8s  %4s  %s",
            i == 1 and j.desc or "", s.label, fmt_num(m_bw), fmt_num(m_iops), spread,
            m_cpu and fmt_num(m_cpu) .. "us" or "-", m_lua and ("%.0f%%"):format(m_lua) or "-", runs)
      end
    end

    -- Ratios: the subject (first server declared) over every other live one.
    local subject = G.servers[1]
    if subject and subject.state == "ok" and #live > 1 then
      local cols = {}
      for _, s in ipairs(live) do
        if s ~= subject then cols[#cols + 1] = s end
      end
      local heads, widths = {}, {}
      for i, s in ipairs(cols) do
        heads[i] = subject.label .. " / " .. s.label
        widths[i] = math.max(#heads[i], 8)
      end
      -- One table: values[job][server], the subject's over each other's.
      local function ratios(title, values)
        say("")
        local line = ("  %-" .. jw .. "s"):format(title)
        for i, h in ipairs(heads) do line = line .. ("  %" .. widths[i] .. "s"):format(h) end
        say("%s", line)
        for _, j in ipairs(G.jobs) do
          line = ("  %-" .. jw .. "s"):format(j.desc)
          for i, s in ipairs(cols) do
            local a, b = values[j.id][subject.id], values[j.id][s.id]
            local cell = (a and b and b > 0) and ("%.2fx"):format(a / b) or "-"
            line = line .. ("  %" .. widths[i] .. "s"):format(cell)
          end
          say("%s", line)
        end
      end
      ratios("ratio (median)", med)
      -- What each request cost the server's process in CPU, which the
      -- machine's other load moves far less than it moves throughput.
      local any = false
      for _, j in ipairs(G.jobs) do
        for _, s in ipairs(cols) do
          if cpu[j.id][subject.id] and cpu[j.id][s.id] then any = true end
        end
      end
      if any then ratios("CPU per request", cpu) end
      -- Against the work it adds: the reference's time plus the work's own.
      local rows = {}
      for _, c in ipairs(G.costs) do
        local srv, ref, job = G.srv[c.server], G.srv[c.ref], G.job[c.job]
        local a = srv and job and median((G.res[c.job .. "\0" .. c.server] or { mibs = {} }).mibs)
        local b = ref and job and median((G.res[c.job .. "\0" .. c.ref] or { mibs = {} }).mibs)
        if a and b and b > 0 and c.mibs and c.mibs > 0 then
          local ceiling = 1 / (1 / b + 1 / c.mibs)
          rows[#rows + 1] = ("  %-" .. jw .. "s  %-" .. lw .. "s  %13s  %10s  %s + %s at %s MiB/s"):format(
            job.desc, srv.label, fmt_num(ceiling), ("%.2fx"):format(a / ceiling), ref.label, c.label, fmt_num(c.mibs))
        end
      end
      if #rows > 0 then
        say("")
        say("  ceilings: the reference's time per byte plus the work's own, one after the other")
        say("  %-" .. jw .. "s  %-" .. lw .. "s  %13s  %10s  %s", "job", "server",
            "ceiling MiB/s", "of it", "reference + work")
        for _, r in ipairs(rows) do say("%s", r) end
      end
    elseif subject then
      say("")
      if subject.state ~= "ok" then
        say("  no ratios: %s did not run", subject.label)
      else
        say("  no ratios: only one server ran")
      end
    end
  end
  io.write(table.concat(out, "\n"), "\n")
end

---------------------------------------------------------------------------
local cmd, arg1 = arg[1], arg[2]
if cmd == "fio" and arg1 then
  local bw, iops, ios, secs = fio_summary(arg1)
  if not bw then
    io.stderr:write(iops, "\n")
    os.exit(1)
  end
  io.write(("%.3f %.1f %d %.3f\n"):format(bw, iops, ios, secs))
elseif cmd == "table" and arg1 then
  print_table(arg1)
else
  io.stderr:write("usage: report.lua fio FILE.json | report.lua table LOG\n")
  os.exit(2)
end
