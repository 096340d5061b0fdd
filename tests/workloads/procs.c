/* Process-shaped workloads for tests/test_trace_live.py. One JSON line per report on stdout.
 *
 *   procs loop NAME INTERVAL_MS  set comm to NAME; the main thread and one more thread call
 *                                openat2("/etc/hostname") every INTERVAL_MS (0: back to back) until
 *                                killed; reports
 *                                {"kind":"workload","mode":"loop","pid","tids":[main,second],"uid","comm"}
 *   procs fork CODE              openat2 in this process, in a child and in a grandchild; reports every pid;
 *                                exits with CODE
 *   procs burst N                N openat("/dev/null") + close as fast as possible
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static long open_hostname(void)
{
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
	long r = syscall(SYS_openat2, AT_FDCWD, "/etc/hostname", &how, sizeof(how));
	if (r >= 0)
		close(r);
	return r < 0 ? -errno : r;
}

static long interval_ms;

static void *looper(void *arg)
{
	(void)arg;
	struct timespec ts = {interval_ms / 1000, (interval_ms % 1000) * 1000000};
	for (;;) {
		open_hostname();
		if (interval_ms)
			nanosleep(&ts, NULL);
	}
	return NULL;
}

static pid_t tid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

static pid_t second_tid;
static int ready[2];

static void *second_thread(void *arg)
{
	second_tid = tid();
	if (write(ready[1], "x", 1) != 1)
		_exit(98);
	return looper(arg);
}

static int loop(const char *name, long ms)
{
	interval_ms = ms;
	if (prctl(PR_SET_NAME, name) || pipe(ready)) /* threads created from now on inherit the name */
		return 98;
	pthread_t t;
	char c;
	if (pthread_create(&t, NULL, second_thread, NULL) || read(ready[0], &c, 1) != 1)
		return 98;
	out("{\"kind\":\"workload\",\"mode\":\"loop\",\"pid\":%d,\"tids\":[%d,%d],\"uid\":%d,\"comm\":\"%s\"}",
	    getpid(), tid(), second_tid, getuid(), name);
	looper(NULL);
	return 0;
}

static int forks(int code)
{
	long r = open_hostname();
	out("{\"kind\":\"workload\",\"mode\":\"fork\",\"role\":\"parent\",\"pid\":%d,\"ret\":%ld}", getpid(), r);
	pid_t c = fork();
	if (c < 0)
		return 98;
	if (c == 0) {
		r = open_hostname();
		out("{\"kind\":\"workload\",\"mode\":\"fork\",\"role\":\"child\",\"pid\":%d,\"ret\":%ld}", getpid(), r);
		pid_t g = fork();
		if (g == 0) {
			r = open_hostname();
			out("{\"kind\":\"workload\",\"mode\":\"fork\",\"role\":\"grandchild\",\"pid\":%d,\"ret\":%ld}",
			    getpid(), r);
			_exit(0);
		}
		waitpid(g, NULL, 0);
		_exit(0);
	}
	waitpid(c, NULL, 0);
	return code;
}

static int burst(long n)
{
	for (long i = 0; i < n; i++) {
		int fd = openat(AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			close(fd);
	}
	out("{\"kind\":\"workload\",\"mode\":\"burst\",\"pid\":%d,\"calls\":%ld}", getpid(), n);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "loop"))
		return loop(argv[2], atol(argv[3]));
	if (argc == 3 && !strcmp(argv[1], "fork"))
		return forks(atoi(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "burst"))
		return burst(atol(argv[2]));
	fprintf(stderr, "usage: %s loop NAME MS | fork CODE | burst N\n", argv[0]);
	return 2;
}
