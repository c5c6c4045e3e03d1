/* The Lua host: one LuaJIT state, which runs lua/usbd/server/main.lua. From
 * there on Lua drives the core through the FFI (usbd.h). */
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "luahost.h"
#include "server.h"

/* Where lua/usbd lives: USBD_LUA_DIR if set; beside the executable (a
 * build tree); PREFIX/share/usbd-lua/lua relative to it (an install, even
 * one staged with DESTDIR or built for another PREFIX); else the data
 * directory compiled in. */
static void lua_dir(char *out, size_t len)
{
    const char *env = getenv("USBD_LUA_DIR");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = n > 0 ? (exe[n] = '\0', strrchr(exe, '/')) : NULL;
    if (slash) {
        *slash = '\0';
        static const char *const beside[] = { "%s/lua", "%s/../share/usbd-lua/lua" };
        for (size_t i = 0; i < sizeof beside / sizeof *beside; i++) {
            char dir[PATH_MAX + 64], probe[PATH_MAX + 96];
            snprintf(dir, sizeof dir, beside[i], exe);
            snprintf(probe, sizeof probe, "%s/usbd/server/main.lua", dir);
            if (access(probe, R_OK) == 0) {
                snprintf(out, len, "%s", dir);
                return;
            }
        }
    }
    snprintf(out, len, "%s/lua", USBD_DATADIR);
}

/* 'it'\''s': a value the shell reads back exactly. */
static void print_quoted(const char *s)
{
    putchar('\'');
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*s);
    }
    putchar('\'');
}

int luahost_print_paths(void)
{
    char dir[PATH_MAX + 64], real[PATH_MAX], lib[PATH_MAX + 96];
    lua_dir(dir, sizeof dir);
    snprintf(lib, sizeof lib, "%s/usbd/init.lua", dir);
    if (access(lib, R_OK) != 0 || !realpath(dir, real)) {
        fprintf(stderr, "usbd-lua: no Lua runtime at %s (set USBD_LUA_DIR)\n", dir);
        return 1;
    }
    /* The core as a library: USBD_LIB if set; in a build tree beside the
     * runtime, in build/; installed, in PREFIX/lib/usbd-lua. */
    const char *env = getenv("USBD_LIB");
    static const char *const libs[] = { "%s/../build/libusbd.so", "%s/../../../lib/usbd-lua/libusbd.so" };
    char found[PATH_MAX] = "";
    if (env && *env) {
        snprintf(found, sizeof found, "%s", env);
    } else {
        for (size_t i = 0; i < sizeof libs / sizeof *libs && !found[0]; i++) {
            snprintf(lib, sizeof lib, libs[i], real);
            if (access(lib, R_OK) == 0 && !realpath(lib, found))
                found[0] = '\0';
        }
    }
    if (!found[0]) {
        fprintf(stderr, "usbd-lua: no libusbd.so beside the Lua runtime at %s (run make; or set USBD_LIB)\n", real);
        return 1;
    }
    /* ";;" ends LUA_PATH with luajit's own path, where busted lives. */
    char path[3 * PATH_MAX];
    snprintf(path, sizeof path, "%s/?.lua;%s/?/init.lua;;", real, real);
    fputs("export LUA_PATH=", stdout);
    print_quoted(path);
    fputs("\nexport USBD_LIB=", stdout);
    print_quoted(found);
    putchar('\n');
    return fflush(stdout) == 0 ? 0 : 1;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int luahost_run(void)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "usbd-lua: out of memory starting LuaJIT\n");
        return 1;
    }
    luaL_openlibs(L);

    char dir[PATH_MAX + 64];
    lua_dir(dir, sizeof dir);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);

    lua_pushcfunction(L, traceback);
    int handler = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "usbd.server.main");
    if (lua_pcall(L, 1, 1, handler) != 0) {
        fprintf(stderr, "usbd-lua: cannot load the Lua runtime from %s: %s\n", dir, lua_tostring(L, -1));
        lua_close(L);
        return 1;
    }
    lua_getfield(L, -1, config.help ? "help" : "main");
    lua_pushstring(L, config.script);
    lua_newtable(L);  /* the words as given: device.lua splits them into layers */
    for (int i = 0; i < config.nargs; i++) {
        lua_pushstring(L, config.args[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushboolean(L, config.readonly);
    lua_pushboolean(L, config.check);
    if (config.seed >= 0)
        lua_pushnumber(L, (lua_Number)config.seed);
    else
        lua_pushnil(L);
    if (config.profile_path)
        lua_pushstring(L, config.profile_path);
    else
        lua_pushnil(L);
    if (config.jit_log_path)
        lua_pushstring(L, config.jit_log_path);
    else
        lua_pushnil(L);
    /* server.main reports its own errors in one line and returns a status;
     * anything that escapes is a bug in the runtime, shown with its trace. */
    int status;
    if (lua_pcall(L, 7, 1, handler) != 0) {
        fprintf(stderr, "usbd-lua: %s\n", lua_tostring(L, -1));
        status = 1;
    } else {
        status = (int)lua_tointeger(L, -1);
    }
    loop_shutdown();
    lua_close(L);
    return status;
}
