/* TLS through GnuTLS (see tls.h). The library reads and writes the
 * connection's own fd; the NBD code above it keeps its buffers, so a
 * WRITE's payload is decrypted into the request's buffer and a READ's
 * reply is encrypted from the buffer the device filled, or from memory it
 * lent: the encryption is the one copy TLS adds.
 *
 * The handshake runs on the connection's handshake thread (handshake.c)
 * with the socket non-blocking and every wait bounded by the client's
 * deadline, so a client that stalls in it, or sends garbage, costs its own
 * connection and thread only. */
#include <errno.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "services/services.h"
#include "tls.h"

/* A record's worth of small pieces (reply headers, 4 KiB reads), copied
 * together so that they leave as one record and one send, as a header and
 * its data should: a record per piece would double the records, the
 * syscalls and the bytes of framing for small replies. */
#define STAGE_SIZE 16384u

struct tls {
    gnutls_session_t session;
    int fd;
    uint8_t stage[STAGE_SIZE];
};

static gnutls_certificate_credentials_t x509_cred;
static gnutls_psk_server_credentials_t psk_cred;
static gnutls_priority_t priority;

bool tls_offered(void)
{
    return config.tls != USBD_TLS_OFF;
}

bool tls_required(void)
{
    return config.tls == USBD_TLS_REQUIRE;
}

static int fail(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a, b);
    return -1;
}

/* A file of DIR that must be there and readable. */
static int readable(char *path, size_t len, const char *dir, const char *name, char *err, size_t errlen)
{
    snprintf(path, len, "%s/%s", dir, name);
    if (access(path, R_OK) < 0) {
        snprintf(err, errlen, "--tls-certificates '%s': cannot read %s: %s", dir, name, strerror(errno));
        return -1;
    }
    return 0;
}

static int setup_x509(char *err, size_t errlen)
{
    const char *dir = config.tls_certificates;
    struct stat st;
    const char *why = stat(dir, &st) < 0 ? strerror(errno) : !S_ISDIR(st.st_mode) ? "not a folder" : NULL;
    if (why)
        return fail(err, errlen, "--tls-certificates '%s': %s (want a folder holding ca-cert.pem, server-cert.pem, server-key.pem)",
                    dir, why);
    char cert[4096], key[4096], ca[4096], crl[4096];
    if (readable(cert, sizeof cert, dir, "server-cert.pem", err, errlen) < 0 ||
        readable(key, sizeof key, dir, "server-key.pem", err, errlen) < 0)
        return -1;
    int rc = gnutls_certificate_allocate_credentials(&x509_cred);
    if (rc == 0)
        rc = gnutls_certificate_set_x509_key_file(x509_cred, cert, key, GNUTLS_X509_FMT_PEM);
    if (rc < 0)
        return fail(err, errlen, "--tls-certificates '%s': server-cert.pem and server-key.pem: %s", dir, gnutls_strerror(rc));
    /* The CA: which client certificates --tls-verify-peer accepts. */
    snprintf(ca, sizeof ca, "%s/ca-cert.pem", dir);
    if (config.tls_verify_peer && readable(ca, sizeof ca, dir, "ca-cert.pem", err, errlen) < 0)
        return -1;
    if (access(ca, R_OK) == 0) {
        rc = gnutls_certificate_set_x509_trust_file(x509_cred, ca, GNUTLS_X509_FMT_PEM);
        if (rc < 0)
            return fail(err, errlen, "--tls-certificates '%s': ca-cert.pem: %s", dir, gnutls_strerror(rc));
        if (rc == 0 && config.tls_verify_peer)
            return fail(err, errlen, "--tls-certificates '%s': ca-cert.pem %s", dir, "holds no certificate");
    }
    snprintf(crl, sizeof crl, "%s/ca-crl.pem", dir);
    if (access(crl, R_OK) == 0) {
        rc = gnutls_certificate_set_x509_crl_file(x509_cred, crl, GNUTLS_X509_FMT_PEM);
        if (rc < 0)
            return fail(err, errlen, "--tls-certificates '%s': ca-crl.pem: %s", dir, gnutls_strerror(rc));
    }
    gnutls_certificate_set_known_dh_params(x509_cred, GNUTLS_SEC_PARAM_MEDIUM);
    return 0;
}

/* The keys file: a username:hexkey a line (psktool's, nbdkit's and
 * libnbd's format). GnuTLS reads it again at each handshake, so keys can
 * be changed while serving; here it is checked once, to fail at start-up
 * rather than at the first client. */
static int check_psk_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return fail(err, errlen, "--tls-psk '%s': cannot read it: %s", path, strerror(errno));
    char line[1024];
    int n = 0, lineno = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        char *colon = strchr(line, ':');
        const char *hex = colon ? colon + 1 : "";
        size_t hexlen = strlen(hex);
        bool ok = colon && colon != line && hexlen > 0 && hexlen % 2 == 0 &&
                  strspn(hex, "0123456789abcdefABCDEF") == hexlen;
        if (!ok) {
            fclose(f);
            snprintf(err, errlen, "--tls-psk '%s': line %d is not username:hexkey", path, lineno);
            return -1;
        }
        n++;
    }
    fclose(f);
    if (n == 0)
        return fail(err, errlen, "--tls-psk '%s': %s", path, "no keys in it (want a username:hexkey a line; psktool makes them)");
    return 0;
}

static int setup_psk(char *err, size_t errlen)
{
    if (check_psk_file(config.tls_psk, err, errlen) < 0)
        return -1;
    int rc = gnutls_psk_allocate_server_credentials(&psk_cred);
    if (rc == 0)
        rc = gnutls_psk_set_server_credentials_file(psk_cred, config.tls_psk);
    if (rc < 0)
        return fail(err, errlen, "--tls-psk '%s': %s", config.tls_psk, gnutls_strerror(rc));
    gnutls_psk_set_server_known_dh_params(psk_cred, GNUTLS_SEC_PARAM_MEDIUM);
    return 0;
}

/* Where the CPU encrypts AES in hardware, AES-GCM is many times faster
 * than ChaCha20-Poly1305 (3.7 against 0.25 GB/s on one core of the
 * machine BENCHMARKS.md describes), yet GnuTLS's clients list ChaCha20
 * before AES-128-GCM, and with a pre-shared key TLS 1.3 takes the first
 * suite whose hash is the key's (SHA-256): ChaCha20. So the server
 * chooses, from its own list with ChaCha20 moved last. Elsewhere the
 * client's order stands. */
static const char *aes_first(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul"))
        return "-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE";
#endif
    return "";
}

int tls_setup(char *err, size_t errlen)
{
    if (!tls_offered())
        return 0;
    int rc = gnutls_global_init();
    if (rc < 0)
        return fail(err, errlen, "TLS: %s%s", gnutls_strerror(rc), "");
    if ((config.tls_psk ? setup_psk : setup_x509)(err, errlen) < 0)
        return -1;
    /* The system's default priorities (its crypto policy), with the PSK
     * key exchanges added for --tls-psk: TLS 1.3 and 1.2 as allowed. */
    char extra[128];
    snprintf(extra, sizeof extra, "%s%s", config.tls_psk ? "+ECDHE-PSK:+DHE-PSK:+PSK:" : "", aes_first());
    rc = gnutls_priority_init2(&priority, extra, NULL, GNUTLS_PRIORITY_INIT_DEF_APPEND);
    if (rc < 0)
        return fail(err, errlen, "TLS: the priority string: %s%s", gnutls_strerror(rc), "");
    return 0;
}

static int ms_until(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (deadline->tv_sec - now.tv_sec) * 1000LL + (deadline->tv_nsec - now.tv_nsec) / 1000000;
    return ms < 0 ? 0 : ms > 1000000 ? 1000000 : (int)ms;
}

struct tls *tls_handshake(int fd, const struct timespec *deadline)
{
    struct tls *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->fd = fd;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        gnutls_init(&t->session, GNUTLS_SERVER | GNUTLS_NO_SIGNAL) < 0) {
        free(t);
        return NULL;
    }
    gnutls_session_t s = t->session;
    int rc = gnutls_priority_set(s, priority);
    if (rc == 0 && psk_cred)
        rc = gnutls_credentials_set(s, GNUTLS_CRD_PSK, psk_cred);
    if (rc == 0 && x509_cred) {
        rc = gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, x509_cred);
        if (config.tls_verify_peer) {
            /* The handshake itself fails unless the client's certificate
             * is there and the CA signed it. */
            gnutls_certificate_server_set_request(s, GNUTLS_CERT_REQUIRE);
            gnutls_session_set_verify_cert(s, NULL, 0);
        }
    }
    if (rc < 0) {
        log_msg(0, "TLS: cannot set up a session: %s", gnutls_strerror(rc));
        tls_close(t);
        return NULL;
    }
    gnutls_transport_set_int(s, fd);
    for (;;) {
        rc = gnutls_handshake(s);
        if (rc == 0)
            break;
        if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
            struct pollfd p = { .fd = fd, .events = gnutls_record_get_direction(s) ? POLLOUT : POLLIN };
            int left = ms_until(deadline);
            int ready = left ? poll(&p, 1, left) : 0;
            if (ready < 0 && errno == EINTR)
                continue;
            if (ready <= 0) {
                log_msg(1, "TLS handshake: client took too long, closing");
                tls_close(t);
                return NULL;
            }
            continue;
        }
        if (!gnutls_error_is_fatal(rc))
            continue;  /* a warning alert: the handshake goes on */
        log_msg(1, "TLS handshake failed: %s", gnutls_strerror(rc));
        tls_close(t);
        return NULL;
    }
    if (config.verbose >= 1) {
        char *desc = gnutls_session_get_desc(s);
        const char *user = psk_cred ? gnutls_psk_server_get_username(s) : NULL;
        log_msg(1, "TLS: %s%s%s", desc ? desc : "session", user ? ", PSK user " : "", user ? user : "");
        gnutls_free(desc);
    }
    return t;
}

static ssize_t io_error(struct tls *t, ssize_t rc)
{
    switch (rc) {
    case GNUTLS_E_AGAIN:
    case GNUTLS_E_INTERRUPTED:
        errno = EAGAIN;
        return -1;
    case GNUTLS_E_REHANDSHAKE:
        /* TLS 1.2's renegotiation: never needed by an NBD client, and a
         * way to make the server work; the connection ends. */
        log_msg(1, "TLS: the client asked to renegotiate: closing the connection");
        errno = EPROTO;
        return -1;
    case GNUTLS_E_PREMATURE_TERMINATION:
        return 0;  /* closed without close_notify: the end, as plain TCP's */
    default:
        log_msg(1, "TLS: %s: closing the connection", gnutls_strerror((int)rc));
        errno = EPROTO;
        return -1;
    }
}

ssize_t tls_recv(struct tls *t, void *buf, size_t len)
{
    for (;;) {
        ssize_t rc = gnutls_record_recv(t->session, buf, len);
        if (rc >= 0)
            return rc;
        if (rc == GNUTLS_E_INTERRUPTED)
            continue;
        /* A warning alert (other than a renegotiation's) is no error. */
        if (rc == GNUTLS_E_WARNING_ALERT_RECEIVED &&
            gnutls_alert_get(t->session) != GNUTLS_A_NO_RENEGOTIATION)
            continue;
        return io_error(t, rc);
    }
}

/* One record from p: the bytes GnuTLS took (all of len, up to a record),
 * 0 when it must wait (EAGAIN: the record is encrypted and pending), or -1
 * with errno. */
static ssize_t send_record(struct tls *t, const uint8_t *p, size_t len)
{
    for (;;) {
        ssize_t rc = gnutls_record_send(t->session, p, len);
        if (rc > 0)
            return rc;
        if (rc == GNUTLS_E_INTERRUPTED)
            continue;
        if (rc == GNUTLS_E_AGAIN)
            return 0;
        return io_error(t, rc);
    }
}

ssize_t tls_sendv(struct tls *t, const struct iovec *iov, int n)
{
    size_t total = 0, staged = 0;
    ssize_t rc;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;
        while (len) {
            if (staged == 0 && len >= STAGE_SIZE) {
                /* Large: encrypted from where it lies, a record at a time. */
                rc = send_record(t, p, len);
                if (rc <= 0)
                    goto stop;
                p += rc;
                len -= (size_t)rc;
                total += (size_t)rc;
                continue;
            }
            size_t take = len < STAGE_SIZE - staged ? len : STAGE_SIZE - staged;
            memcpy(t->stage + staged, p, take);
            staged += take;
            p += take;
            len -= take;
            if (staged == STAGE_SIZE) {
                rc = send_record(t, t->stage, staged);
                if (rc <= 0)
                    goto stop;
                total += (size_t)rc;
                if ((size_t)rc < staged)
                    return (ssize_t)total;  /* a smaller record size: the rest again */
                staged = 0;
            }
        }
    }
    if (staged) {
        rc = send_record(t, t->stage, staged);
        if (rc <= 0)
            goto stop;
        total += (size_t)rc;
    }
    return (ssize_t)total;
stop:
    /* Bytes staged but not taken are not counted: the caller offers them
     * again, and GnuTLS sends the pending record first. */
    if (rc == 0 && total == 0) {
        errno = EAGAIN;
        return -1;
    }
    return rc == 0 ? (ssize_t)total : -1;
}

bool tls_pending(struct tls *t)
{
    return gnutls_record_check_pending(t->session) > 0;
}

bool tls_wants_write(struct tls *t)
{
    return gnutls_record_get_direction(t->session) == 1;
}

void tls_close(struct tls *t)
{
    if (!t)
        return;
    if (t->session) {
        /* close_notify, if the socket takes it at once; no waiting. */
        gnutls_bye(t->session, GNUTLS_SHUT_WR);
        gnutls_deinit(t->session);
    }
    free(t);
}
