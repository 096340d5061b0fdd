/* A flood of openat2 calls for the accounting tests (tests/test_accounting_live.py): every call the
 * tracer saw must come out delivered or counted lost.
 *
 *   flood N THREADS   THREADS threads (the main one included) make N openat2 calls in all, as fast as
 *                     they can, on a path that does not exist (ENOENT: nothing to close, and the calls
 *                     are the only openat2 calls of the process: libc and ld.so use openat).
 *
 * Nothing on stdout (the event stream may share it); at the end one JSON line on stderr with the calls
 * made, counted by the threads themselves: {"kind":"workload","mode":"flood","pid","calls"}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

static long per_thread;

static void *worker(void *made)
{
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
	long n = 0;
	for (long i = 0; i < per_thread; i++) {
		syscall(SYS_openat2, AT_FDCWD, "/nonexistent-tracer-flood/file", &how, sizeof(how));
		n++;
	}
	*(long *)made = n;
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s N THREADS\n", argv[0]);
		return 2;
	}
	long calls = atol(argv[1]);
	int threads = atoi(argv[2]);
	if (calls < 0 || threads < 1 || threads > 64 || calls % threads) {
		fprintf(stderr, "flood: N must be a multiple of THREADS (1..64)\n");
		return 2;
	}
	per_thread = calls / threads;
	pthread_t tid[64];
	long made[64] = {0};
	for (int i = 1; i < threads; i++)
		if (pthread_create(&tid[i], NULL, worker, &made[i]))
			die("pthread_create");
	worker(&made[0]);
	long total = made[0];
	for (int i = 1; i < threads; i++) {
		pthread_join(tid[i], NULL);
		total += made[i];
	}
	fprintf(stderr, "{\"kind\":\"workload\",\"mode\":\"flood\",\"pid\":%d,\"calls\":%ld}\n", getpid(), total);
	return 0;
}
