/* What only the unit tests call: functions of the core that no C file and
 * no Lua uses, so that no header of src/ offers them. */
#ifndef USBD_TEST_HOOKS_H
#define USBD_TEST_HOOKS_H

#include <stddef.h>

/* server/buffer.c: bytes held in the free lists now. */
size_t buffer_cached(void);

#endif
