/* The rules a request must pass, after the NBD protocol document's
 * "Request types" and "Error values" sections. */
#include <errno.h>

#include "nbd.h"
#include "request.h"

uint16_t export_flags(const usbd_export *dev, bool readonly)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS;
    bool writable = dev->can_write && !readonly;

    if (!writable)
        f |= NBD_FLAG_READ_ONLY;
    /* FLUSH and FUA are accepted from every client (request_check), but
     * offered only by a device that has something volatile: told there is
     * no cache, the kernel sends no flushes and no FUA, which saves a round
     * trip each for nothing. */
    if (dev->can_flush) {
        f |= NBD_FLAG_SEND_FLUSH;
        if (writable)
            f |= NBD_FLAG_SEND_FUA;
    }
    if (writable) {
        /* Zeroes fall back to writes, so they are always on offer; a fast
         * zero is one the device does itself. */
        f |= NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
        if (dev->can_trim)
            f |= NBD_FLAG_SEND_TRIM;
    }
    if (dev->can_multi_conn)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}

bool request_framing_ok(const struct export_info *ex, uint16_t type, uint32_t length)
{
    return type != NBD_CMD_WRITE || length <= ex->max_request;
}

uint32_t request_max_extents(uint16_t flags, uint32_t length)
{
    if (flags & NBD_CMD_FLAG_REQ_ONE)
        return 1;
    return length < USBD_MAX_EXTENTS ? length : USBD_MAX_EXTENTS;
}

uint32_t request_check(const struct export_info *ex, uint16_t type, uint16_t flags,
                       uint64_t offset, uint32_t length, bool structured, bool meta_context)
{
    uint16_t tf = ex->tflags;
    uint16_t allowed = 0;
    bool ranged = true, writes = false, past_end_nospc = false;

    /* FUA is accepted on every write, advertised or not, as nbd-server and
     * qemu-nbd do: clients send it regardless, and on a device without
     * flush() there is nothing to make durable. */
    switch (type) {
    case NBD_CMD_READ:
        break;
    case NBD_CMD_WRITE:
        writes = past_end_nospc = true;
        allowed |= NBD_CMD_FLAG_FUA;
        break;
    case NBD_CMD_FLUSH:
        ranged = false;
        break;
    case NBD_CMD_TRIM:
        if (!(tf & NBD_FLAG_SEND_TRIM) && !(tf & NBD_FLAG_READ_ONLY))
            return NBD_EINVAL;
        writes = true;
        allowed |= NBD_CMD_FLAG_FUA;
        break;
    case NBD_CMD_WRITE_ZEROES:
        writes = past_end_nospc = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_FUA;
        break;
    case NBD_CMD_BLOCK_STATUS:
        /* Only with a context selected, which needs structured replies. */
        if (!meta_context || !structured)
            return NBD_EINVAL;
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        /* DISC is handled before this; CACHE is never advertised. */
        return NBD_EINVAL;
    }
    if (flags & ~allowed)
        return NBD_EINVAL;
    if (writes && (tf & NBD_FLAG_READ_ONLY))
        return NBD_EPERM;
    if (!ranged)
        return 0;
    if (length == 0)
        return NBD_EINVAL;
    if (type == NBD_CMD_READ && length > ex->max_request)
        return structured ? NBD_EOVERFLOW : NBD_EINVAL;
    uint64_t size = export_size(ex);
    if (offset > size || length > size - offset)
        return past_end_nospc ? NBD_ENOSPC : NBD_EINVAL;
    if ((flags & NBD_CMD_FLAG_FAST_ZERO) && !ex->dev.can_zero)
        return NBD_ENOTSUP;
    return 0;
}

uint32_t nbd_error_from_errno(int err)
{
    switch (err) {
    case 0: return 0;
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;  /* == EOPNOTSUPP on Linux */
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}
