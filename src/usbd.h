/* usbd.h: the C API that Lua sees through the FFI: the public header of
 * each part, beside its C file.
 *
 * The build makes the FFI's declarations from the headers this one
 * includes (tools/gen-cdef.lua: build/cdef.h, which lua/usbd/core/cdef.lua
 * loads), and tests/unit/cdef_agrees.lua proves LuaJIT lays their structs
 * out as the compiler does. So a public header holds only what ffi.cdef
 * parses: plain typedefs, enums, structs and prototypes with fixed-width
 * types; the generator drops include lines and guards and refuses any
 * other # line. What C alone may call sits in services/services.h and the
 * server's own headers. In the order ffi.cdef reads them: the services,
 * then the server above them. */
#ifndef USBD_H
#define USBD_H

#include "cli.h"
#include "services/types.h"
#include "services/log.h"
#include "services/mem.h"
#include "services/hash.h"
#include "services/jobs.h"
#include "services/file.h"
#include "services/blocks.h"
#include "services/kv.h"
#include "services/codec.h"
#include "services/cipher.h"
#include "services/rbd.h"
#include "services/sparse.h"
#include "services/hashindex.h"
#include "server/serve.h"
#include "server/filemap.h"

#endif
