/* Listening on Unix and TCP sockets. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "sockets.h"

/* The process's umask, read without changing it: umask(2) would set it for
 * every thread, and the device's may be making files. */
static mode_t current_umask(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    unsigned m = 022;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Umask: %o", &m) == 1)
            break;
    if (f)
        fclose(f);
    return (mode_t)m;
}

int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -1;
    return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* A Unix stream socket's send buffer bounds the bytes sent and not yet
 * read (wmem_default, about 208 KiB): a fifth of a 1 MiB reply, and each
 * refill a wake-up of both ends. With 2 MiB (the kernel doubles what is
 * asked, up to wmem_max), 1 MiB reads served 1.4x the MiB/s at 0.85x the
 * CPU per request; 8 MiB did no better. */
void widen_unix_send_buffer(int fd)
{
    int bytes = 1 << 20;
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

/* Does a server answer on this Unix socket path? */
static int unix_socket_live(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int live = connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0;
    close(fd);
    return live;
}

int listen_unix(const char *path, int mode, int64_t gid, char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) {
        snprintf(err, errlen, "socket path '%s' is too long: use one under %zu bytes", path, sizeof sa.sun_path);
        return -1;
    }
    strcpy(sa.sun_path, path);

    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "'%s' exists and is not a socket: choose another -U path", path);
            return -1;
        }
        if (unix_socket_live(&sa)) {
            snprintf(err, errlen, "a server is already listening on '%s': stop it or choose another -U path", path);
            return -1;
        }
        unlink(path);  /* stale: its server is gone */
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* Linux makes the socket's file with the mode of the socket's inode
     * (less the umask): with --socket-mode or --socket-group, the file is
     * born open to its owner alone, and only opened to the group or others
     * once its group is the one asked for. No client can connect in
     * between: listen comes last. */
    bool perms = mode >= 0 || gid >= 0;
    if (fd >= 0 && perms && fchmod(fd, 0600) < 0) {
        snprintf(err, errlen, "cannot set the permissions of '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (gid >= 0 && lchown(path, (uid_t)-1, (gid_t)gid) < 0) {
        snprintf(err, errlen, "cannot give '%s' to group %lld (--socket-group): %s", path, (long long)gid, strerror(errno));
        unlink(path);
        close(fd);
        return -1;
    }
    if (perms) {
        mode_t m = mode >= 0 ? (mode_t)mode : (mode_t)(0666 & ~current_umask());
        if (chmod(path, m) < 0) {
            snprintf(err, errlen, "cannot set the mode of '%s' (--socket-mode): %s", path, strerror(errno));
            unlink(path);
            close(fd);
            return -1;
        }
    }
    if (listen(fd, 128) < 0) {
        snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(errno));
        unlink(path);
        close(fd);
        return -1;
    }
    set_nonblocking(fd);
    return fd;
}

int listen_tcp(const char *ip, const char *port, char *err, size_t errlen)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV };
    struct addrinfo *ai;
    int rc = getaddrinfo(ip, port, &hints, &ai);
    if (rc) {
        snprintf(err, errlen, "cannot listen on %s port %s: %s (-i takes a numeric address)", ip, port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
        snprintf(err, errlen, "cannot listen on %s port %s: %s", ip, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    set_nonblocking(fd);
    return fd;
}
