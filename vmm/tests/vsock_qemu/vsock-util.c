/* vsock-util: the guest side of the vsock tests and benchmark (AF_VSOCK, built static).
 *
 *   vsock-util echo PORT          serve PORT: echo every byte back until EOF (a child per
 *                                 connection), then close
 *   vsock-util sink PORT          serve PORT: read until EOF, answer "<bytes>\n", close
 *   vsock-util source PORT        serve PORT: read a line "<bytes>\n", send that many bytes, close
 *   vsock-util reboot PORT        serve PORT: on the first connection, sync and reboot the guest
 *   (PORT may be tcp:N to serve TCP on 0.0.0.0:N instead, for the benchmark's TCP forward)
 *   vsock-util connect PORT MSG   connect to the host (CID 2) PORT, send MSG, shut down the write
 *                                 side, print what comes back; prints "ERR <errno name>" on a
 *                                 failed connect
 *
 * Written in C because the guest is a busybox initramfs without a vsock-capable netcat.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

static char buf[1 << 16];

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void serve_echo(int c) {
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (write_all(c, buf, (size_t)n) < 0) break;
    }
}

static void serve_sink(int c) {
    unsigned long long total = 0;
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        total += (unsigned long long)n;
    }
    int len = snprintf(buf, sizeof buf, "%llu\n", total);
    write_all(c, buf, (size_t)len);
}

static void serve_source(int c) {
    char line[32];
    size_t got = 0;
    while (got < sizeof line - 1) {
        ssize_t n = read(c, line + got, 1);
        if (n <= 0) return;
        if (line[got] == '\n') break;
        got++;
    }
    line[got] = 0;
    unsigned long long left = strtoull(line, NULL, 10);
    memset(buf, 'x', sizeof buf);
    while (left > 0) {
        size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
        if (write_all(c, buf, n) < 0) return;
        left -= n;
    }
}

static int serve(const char *mode, const char *spec) {
    int tcp = !strncmp(spec, "tcp:", 4);
    unsigned port = (unsigned)atoi(tcp ? spec + 4 : spec);
    int s = socket(tcp ? AF_INET : AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    int one = 1;
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port };
    struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
    if (tcp) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((tcp ? bind(s, (struct sockaddr *)&in, sizeof in) : bind(s, (struct sockaddr *)&a, sizeof a)) < 0) {
        perror("bind");
        return 1;
    }
    if (listen(s, 64) < 0) { perror("listen"); return 1; }
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; perror("accept"); return 1; }
        if (tcp) setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (!strcmp(mode, "reboot")) {
            sync();
            reboot(RB_AUTOBOOT);
            return 1;
        }
        if (fork() == 0) {
            close(s);
            if (!strcmp(mode, "echo")) serve_echo(c);
            else if (!strcmp(mode, "sink")) serve_sink(c);
            else serve_source(c);
            close(c);
            _exit(0);
        }
        close(c);
    }
}

static int connect_host(unsigned port, const char *msg) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port };
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        printf("ERR %s\n", errno == ECONNRESET ? "ECONNRESET" : strerror(errno));
        return 2;
    }
    if (write_all(s, msg, strlen(msg)) < 0) { perror("write"); return 1; }
    shutdown(s, SHUT_WR);
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        fwrite(buf, 1, (size_t)n, stdout);
    }
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && (!strcmp(argv[1], "echo") || !strcmp(argv[1], "sink") || !strcmp(argv[1], "source") ||
                      !strcmp(argv[1], "reboot")))
        return serve(argv[1], argv[2]);
    if (argc == 4 && !strcmp(argv[1], "connect"))
        return connect_host((unsigned)atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: vsock-util echo|sink|source|reboot PORT | connect PORT MSG\n");
    return 64;
}
