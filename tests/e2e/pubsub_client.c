/*
 * pubsub_client.c - the end-to-end test of pubsub_server.c (ctest e2e_pubsub):
 *
 *   e2e_pubsub_client PATH_TO_e2e_pubsub_server
 *
 * Starts the server on free loopback ports, subscribes with one client,
 * publishes with another, checks what arrives (and what does not), reads
 * /metrics, stops the server with SIGTERM while both clients are still
 * connected and checks that it exits 0. A second run stops it with
 * --exit-after-ms. Exit status 0 = pass; any failure says what and exits 1.
 * In C rather than sh: dash has no /dev/tcp and nc is not always there.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Generous: sanitizer builds start and run much slower. */
#define START_TIMEOUT_MS 20000
#define REPLY_TIMEOUT_MS 5000
#define QUIET_MS 300
#define EXIT_TIMEOUT_MS 20000

static pid_t server = -1;
static char tmpdir[256], port_file[300], port_tmp[310];

static void cleanup(void)
{
    if (server > 0) {
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = -1;
    }
    if (tmpdir[0]) {
        remove(port_file);
        remove(port_tmp);
        rmdir(tmpdir);
        tmpdir[0] = '\0';
    }
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void
fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pubsub_client: FAIL: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    cleanup();
    exit(1);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void start_server(const char *exe, const char *exit_after_ms, bool metrics)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/pubsub_server.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpdir)) {
        tmpdir[0] = '\0';
        fail("mkdtemp: %s", strerror(errno));
    }
    snprintf(port_file, sizeof port_file, "%s/ports", tmpdir);
    snprintf(port_tmp, sizeof port_tmp, "%s.tmp", port_file);

    char *argv[8];
    int n = 0;
    argv[n++] = (char *)exe;
    argv[n++] = "0";
    if (metrics)
        argv[n++] = "0";
    argv[n++] = "--port-file";
    argv[n++] = port_file;
    argv[n++] = "--exit-after-ms";
    argv[n++] = (char *)exit_after_ms;
    argv[n] = NULL;
    fflush(NULL);
    server = fork();
    if (server < 0)
        fail("fork: %s", strerror(errno));
    if (server == 0) {
        execv(exe, argv);
        fprintf(stderr, "pubsub_client: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
}

/* Waits for the port file; fails if the server exits first. */
static void wait_ports(unsigned *port, unsigned *mport)
{
    int64_t deadline = now_ms() + START_TIMEOUT_MS;
    for (;;) {
        FILE *f = fopen(port_file, "r");
        if (f) {
            char nl = 0;
            int n = fscanf(f, "%u %u%c", port, mport, &nl);
            fclose(f);
            if (n == 3 && nl == '\n' && *port > 0)
                return;
            fail("port file has unexpected contents");
        }
        int st;
        if (waitpid(server, &st, WNOHANG) == server) {
            server = -1;
            fail("server exited before listening (%s %d)", WIFEXITED(st) ? "status" : "signal",
                 WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        }
        if (now_ms() > deadline)
            fail("no port file after %d ms", START_TIMEOUT_MS);
        sleep_ms(20);
    }
}

static void wait_exit(const char *how)
{
    int64_t deadline = now_ms() + EXIT_TIMEOUT_MS;
    int st;
    for (;;) {
        pid_t r = waitpid(server, &st, WNOHANG);
        if (r == server)
            break;
        if (r < 0 && errno != EINTR)
            fail("waitpid: %s", strerror(errno));
        if (now_ms() > deadline)
            fail("server still running %d ms after %s", EXIT_TIMEOUT_MS, how);
        sleep_ms(20);
    }
    server = -1;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (WIFSIGNALED(st))
            fail("server killed by signal %d after %s", WTERMSIG(st), how);
        fail("server exit status %d after %s (want 0)", WEXITSTATUS(st), how);
    }
    cleanup();
}

struct conn {
    int fd;
    size_t len;
    char buf[8192];
};

static int dial(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0)
        fail("connect to 127.0.0.1:%u: %s", port, strerror(errno));
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t len = strlen(s);
    while (len) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("send: %s", strerror(errno));
        s += n;
        len -= (size_t)n;
    }
}

/* Reads until deadline or EOF into c->buf; returns bytes read (0 = EOF or
 * timeout, told apart by *eof). */
static size_t read_some(struct conn *c, int64_t deadline, bool *eof)
{
    *eof = false;
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left < 0)
            left = 0;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail("poll: %s", strerror(errno));
        if (r == 0)
            return 0;
        if (c->len == sizeof c->buf - 1)
            fail("line too long from server");
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *eof = true;
            return 0;
        }
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        return (size_t)n;
    }
}

/* The next line (without its newline) into out; false on timeout or EOF. */
static bool next_line(struct conn *c, int timeout_ms, char *out, size_t size, bool *eof)
{
    int64_t deadline = now_ms() + timeout_ms;
    *eof = false;
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            snprintf(out, size, "%.*s", (int)n, c->buf);
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return true;
        }
        if (read_some(c, deadline, eof) == 0)
            return false;
    }
}

static void expect_line(struct conn *c, const char *want, bool prefix, const char *what)
{
    char line[8192];
    bool eof;
    if (!next_line(c, REPLY_TIMEOUT_MS, line, sizeof line, &eof))
        fail("%s: %s instead of \"%s\"", what, eof ? "connection closed" : "timed out", want);
    if (prefix ? strncmp(line, want, strlen(want)) != 0 : strcmp(line, want) != 0)
        fail("%s: got \"%s\", want %s\"%s\"", what, line, prefix ? "a line starting with " : "",
             want);
}

static void expect_quiet(struct conn *c, const char *what)
{
    char line[8192];
    bool eof;
    if (next_line(c, QUIET_MS, line, sizeof line, &eof))
        fail("%s: unexpected \"%s\"", what, line);
    if (eof)
        fail("%s: connection closed", what);
}

static void expect_eof(struct conn *c, const char *what)
{
    int64_t deadline = now_ms() + EXIT_TIMEOUT_MS;
    bool eof = false;
    while (!eof && now_ms() < deadline)
        read_some(c, deadline, &eof);
    if (!eof)
        fail("%s: connection not closed", what);
}

/* One HTTP/1.0 request; returns the whole response (static buffer). */
static const char *http_get(unsigned port, const char *path)
{
    static struct conn c;
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    c.fd = dial(port);
    c.len = 0;
    c.buf[0] = '\0';
    send_all(c.fd, req);
    int64_t deadline = now_ms() + REPLY_TIMEOUT_MS;
    bool eof = false;
    while (!eof) {
        if (read_some(&c, deadline, &eof) == 0 && !eof)
            fail("GET %s: no complete response in %d ms", path, REPLY_TIMEOUT_MS);
    }
    close(c.fd);
    return c.buf;
}

static void check_metrics(unsigned mport)
{
    const char *r = http_get(mport, "/metrics");
    if (strncmp(r, "HTTP/1.0 200 ", 13) != 0)
        fail("GET /metrics: status line \"%.40s\"", r);
    const char *body = strstr(r, "\r\n\r\n");
    const char *ctype = strstr(r, "\r\nContent-Type: text/plain; version=0.0.4\r\n");
    if (!body || !ctype || ctype > body)
        fail("GET /metrics: no Content-Type: text/plain; version=0.0.4 header");
    body += 2; /* keep one newline so every line starts after "\n" */
    if (!strstr(body, "\nringbus_topic_published_total{topic=\"news.today\"} 1\n"))
        fail("metrics lack ringbus_topic_published_total{topic=\"news.today\"} 1:\n%s", body);
    if (!strstr(body, "\nringbus_sub_offered_total{"))
        fail("metrics lack a ringbus_sub_offered_total{ line:\n%s", body);

    r = http_get(mport, "/nothing");
    if (strncmp(r, "HTTP/1.0 404 ", 13) != 0)
        fail("GET /nothing: status line \"%.40s\", want 404", r);
}

static void run_sigterm(const char *exe)
{
    static struct conn c1, c2;
    unsigned port, mport;

    /* --exit-after-ms only as a backstop should this driver die. */
    start_server(exe, "45000", true);
    wait_ports(&port, &mport);
    if (mport == 0)
        fail("port file has no metrics port");

    c1.fd = dial(port);
    send_all(c1.fd, "SUB news.*\n");
    expect_line(&c1, "OK", false, "SUB news.*");

    c2.fd = dial(port);
    send_all(c2.fd, "PUB news.today hello\n");
    expect_line(&c2, "OK", false, "PUB news.today");
    send_all(c2.fd, "PUB other.x nope\n");
    expect_line(&c2, "OK", false, "PUB other.x");
    send_all(c2.fd, "PUB bad..topic x\n");
    expect_line(&c2, "ERR ", true, "PUB to an invalid topic");
    send_all(c2.fd, "HELLO\n");
    expect_line(&c2, "ERR ", true, "unknown command");

    expect_line(&c1, "MSG news.today 1 hello", false, "subscriber");
    expect_quiet(&c1, "subscriber after the one message");
    expect_quiet(&c2, "publisher (subscribed to nothing)");

    check_metrics(mport);

    if (kill(server, SIGTERM) != 0)
        fail("kill: %s", strerror(errno));
    expect_eof(&c1, "subscriber at shutdown");
    expect_eof(&c2, "publisher at shutdown");
    close(c1.fd);
    close(c2.fd);
    wait_exit("SIGTERM");
    printf("pubsub_client: SIGTERM run passed\n");
}

static void run_deadline(const char *exe)
{
    static struct conn c;
    unsigned port, mport;

    start_server(exe, "3000", false);
    wait_ports(&port, &mport);
    if (mport != 0)
        fail("port file names a metrics port the server was not given");
    c.fd = dial(port);
    /* Left connected with a subscription: shutdown must clean it up. */
    send_all(c.fd, "SUB a.>\nPUB a.b x\n");
    expect_line(&c, "OK", false, "SUB a.>");
    expect_line(&c, "OK", false, "PUB a.b");
    expect_line(&c, "MSG a.b 1 x", false, "own subscription");
    wait_exit("--exit-after-ms");
    expect_eof(&c, "client at shutdown");
    close(c.fd);
    printf("pubsub_client: --exit-after-ms run passed\n");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: e2e_pubsub_client PATH_TO_e2e_pubsub_server\n");
        return 2;
    }
    run_sigterm(argv[1]);
    run_deadline(argv[1]);
    printf("pubsub_client: all passed\n");
    return 0;
}
