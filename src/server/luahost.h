#ifndef USBD_LUAHOST_H
#define USBD_LUAHOST_H
/* Run the device script under LuaJIT until the server stops. Returns the
 * process exit status. */
int luahost_run(void);
#endif
