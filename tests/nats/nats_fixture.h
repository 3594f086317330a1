/* Test fixture: a real nats-server on 127.0.0.1, on a free port, with
 * JetStream in a temporary store directory, started and stopped by the test.
 * Used by test_nats_bridge.c and bench/nats_bridge.c. */
#ifndef RBUS_NATS_FIXTURE_H
#define RBUS_NATS_FIXTURE_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

typedef struct nats_server {
    pid_t pid;
    int port;
    bool jetstream;
    char dir[64];   /* store directory and log */
    char url[64];
} nats_server;

static inline void fixture_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A port nobody listens on right now (the kernel's pick for port 0). */
static inline int fixture_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static inline bool fixture_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Starts (or, with s->port already set, restarts on the same port and store)
 * nats-server. Returns 0, or -1 with the reason on stderr. */
static inline int nats_server_start(nats_server *s, bool jetstream)
{
    if (s->port == 0) {
        snprintf(s->dir, sizeof s->dir, "/tmp/rbus-nats-XXXXXX");
        if (!mkdtemp(s->dir)) {
            perror("mkdtemp");
            return -1;
        }
        s->port = fixture_free_port();
        if (s->port <= 0)
            return -1;
        snprintf(s->url, sizeof s->url, "nats://127.0.0.1:%d", s->port);
    }
    s->jetstream = jetstream;
    char port[16], log[96], store[80];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(log, sizeof log, "%s/server.log", s->dir);
    snprintf(store, sizeof store, "%s/store", s->dir);
    char *argv_js[] = {"nats-server", "-a", "127.0.0.1", "-p", port, "-js", "-sd", store,
                       "-l", log, NULL};
    char *argv_core[] = {"nats-server", "-a", "127.0.0.1", "-p", port, "-l", log, NULL};
    /* fork and exec rather than posix_spawn: the child asks to be killed
     * when its parent dies, so a failed test (or a crash) never leaves a
     * server behind, not even a SIGSTOPped one. */
    int ready[2];
    if (pipe(ready) != 0)
        return -1;
    /* Close-on-exec: a successful exec closes it, which the parent reads
     * as "started"; a failed one writes errno into it. */
    fcntl(ready[1], F_SETFD, FD_CLOEXEC);
    pid_t parent = getpid();
    s->pid = fork();
    if (s->pid == 0) {
        close(ready[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        execvp("nats-server", jetstream ? argv_js : argv_core);
        int e = errno;
        ssize_t w = write(ready[1], &e, sizeof e);
        (void)w;
        _exit(127);
    }
    close(ready[1]);
    if (s->pid < 0) {
        close(ready[0]);
        return -1;
    }
    int exec_errno = 0;
    ssize_t got = read(ready[0], &exec_errno, sizeof exec_errno);
    close(ready[0]);
    if (got == (ssize_t)sizeof exec_errno) {
        fprintf(stderr, "cannot run nats-server (Debian package nats-server): %s\n",
                strerror(exec_errno));
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
        return -1;
    }
    for (int i = 0; i < 500; i++) { /* up to 10 s */
        if (fixture_port_open(s->port))
            return 0;
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            fprintf(stderr, "nats-server exited at start; its log is %s\n", log);
            s->pid = 0;
            return -1;
        }
        fixture_sleep_ms(20);
    }
    fprintf(stderr, "nats-server did not listen on port %d within 10 s\n", s->port);
    return -1;
}

/* Stops it with `sig` (SIGTERM: clean; SIGKILL: a crash) and reaps it. */
static inline void nats_server_stop(nats_server *s, int sig)
{
    if (s->pid > 0) {
        kill(s->pid, sig);
        kill(s->pid, SIGCONT); /* a stopped server would not act on SIGTERM */
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

/* Stops it and removes its store. */
static inline void nats_server_destroy(nats_server *s)
{
    nats_server_stop(s, SIGTERM);
    if (s->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", s->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", s->dir);
        s->dir[0] = '\0';
    }
    s->port = 0;
}

#endif
