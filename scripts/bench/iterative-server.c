/*
 * The baseline for the benchmark suite: a minimal iterative length-echo server in C, as the tutorial's
 * original is: one client at a time, accept, read until the NUL, write "<len> : <msg>\0", close.
 * (Unlike the original it reads until the NUL rather than trusting one read(), so it is correct under load.)
 *
 * usage: iterative-server PORT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {0};
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[1]));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4096) != 0) {
        perror("bind/listen");
        return 1;
    }
    fprintf(stderr, "iterative-server: listening on 127.0.0.1:%s\n", argv[1]);
    char message[1024];
    char reply[1100];
    for (;;) {
        int client = accept(listener, NULL, NULL);
        if (client < 0) continue;
        setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        size_t used = 0;
        for (;;) {
            ssize_t n = read(client, message + used, sizeof message - 1 - used);
            if (n <= 0) break;
            used += (size_t)n;
            if (memchr(message, 0, used) != NULL || used == sizeof message - 1) break;
        }
        message[used] = 0;
        size_t length = strlen(message);
        int header = snprintf(reply, sizeof reply, "%zu : ", length);
        memcpy(reply + header, message, length + 1);
        ssize_t ignored = write(client, reply, (size_t)header + length + 1);
        (void)ignored;
        close(client);
    }
}
