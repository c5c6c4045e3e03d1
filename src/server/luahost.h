#ifndef USBD_LUAHOST_H
#define USBD_LUAHOST_H
/* Run the device script under LuaJIT until the server stops. Returns the
 * process exit status. */
int luahost_run(void);
/* --lua-path: print, as shell lines, the LUA_PATH that finds this
 * server's Lua runtime and the USBD_LIB that holds its core, for luajit
 * and busted run outside the server. 0, or 1 if either is missing. */
int luahost_print_paths(void);
#endif
