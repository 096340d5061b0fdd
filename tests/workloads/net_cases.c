/* connect and accept4 with known addresses, for tests/test_trace_live.py.
 *
 * Usage: net_cases TCP_PORT UNIX_PATH
 *   1. connect(AF_INET 127.0.0.1:TCP_PORT)        (a socket the test listens on)
 *   2. connect(AF_UNIX UNIX_PATH)                 (a socket the test listens on)
 *   3. own listener on 127.0.0.1, a client connects to it, accept4(lfd, &peer, &len, SOCK_CLOEXEC)
 *   4. a second client, accept4(lfd, NULL, NULL, 0)
 *   5. accept4 on a non-blocking listener with nothing pending: EAGAIN, the kernel fills nothing
 * One JSON line per call on stdout; "ret" is the kernel's return value (-errno on failure).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "workload.h"

#define U(p) ((unsigned long)(p))
#define R(r) ((r) < 0 ? -errno : (r))

static int local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	if (getsockname(fd, (struct sockaddr *)&a, &len))
		die("getsockname");
	return ntohs(a.sin_port);
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s TCP_PORT UNIX_PATH\n", argv[0]);
		return 2;
	}
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int r = connect(s, (struct sockaddr *)&in, sizeof(in));
	out("{\"kind\":\"workload\",\"case\":\"connect_inet\",\"pid\":%d,\"addr\":%lu,\"addrlen\":%zu,\"fd\":%d,"
	    "\"ret\":%d,\"local_port\":%d}",
	    getpid(), U(&in), sizeof(in), s, R(r), local_port(s));

	struct sockaddr_un un = {.sun_family = AF_UNIX};
	strncpy(un.sun_path, argv[2], sizeof(un.sun_path) - 1);
	socklen_t ulen = offsetof(struct sockaddr_un, sun_path) + strlen(un.sun_path) + 1;
	int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(u, (struct sockaddr *)&un, ulen);
	out("{\"kind\":\"workload\",\"case\":\"connect_unix\",\"pid\":%d,\"addr\":%lu,\"addrlen\":%u,\"fd\":%d,"
	    "\"ret\":%d}",
	    getpid(), U(&un), ulen, u, R(r));

	/* Own listener; the client's connect is traced too. */
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in la = {.sin_family = AF_INET};
	la.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t lalen = sizeof(la);
	if (bind(l, (struct sockaddr *)&la, sizeof(la)) || listen(l, 8) ||
	    getsockname(l, (struct sockaddr *)&la, &lalen))
		die("listen");
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(c, (struct sockaddr *)&la, sizeof(la));
	out("{\"kind\":\"workload\",\"case\":\"connect_own\",\"pid\":%d,\"addr\":%lu,\"addrlen\":%zu,\"fd\":%d,"
	    "\"ret\":%d,\"port\":%d}",
	    getpid(), U(&la), sizeof(la), c, R(r), ntohs(la.sin_port));

	struct sockaddr_storage peer;
	memset(&peer, 0xee, sizeof(peer));
	socklen_t plen = sizeof(peer);
	int a = accept4(l, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
	out("{\"kind\":\"workload\",\"case\":\"accept4\",\"pid\":%d,\"addr\":%lu,\"addrlen_ptr\":%lu,\"ret\":%d,"
	    "\"addrlen_after\":%u,\"client_port\":%d,\"listen_fd\":%d}",
	    getpid(), U(&peer), U(&plen), R(a), plen, local_port(c), l);

	int c2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	r = connect(c2, (struct sockaddr *)&la, sizeof(la));
	int a2 = accept4(l, NULL, NULL, 0);
	out("{\"kind\":\"workload\",\"case\":\"accept4_null\",\"pid\":%d,\"connect_ret\":%d,\"ret\":%d,"
	    "\"listen_fd\":%d}",
	    getpid(), R(r), R(a2), l);

	if (fcntl(l, F_SETFL, O_NONBLOCK))
		die("fcntl");
	struct sockaddr_in nothing;
	memset(&nothing, 0xee, sizeof(nothing));
	socklen_t nlen = sizeof(nothing);
	int a3 = accept4(l, (struct sockaddr *)&nothing, &nlen, 0);
	out("{\"kind\":\"workload\",\"case\":\"accept4_eagain\",\"pid\":%d,\"addr\":%lu,\"ret\":%d}", getpid(),
	    U(&nothing), R(a3));
	return 0;
}
