/* Calls of its own exported function uprobe_target_fn with known arguments, for tests/test_uprobes.py.
 *
 * Usage: uprobe_target (temporary file in $WORKLOAD_DIR, default /tmp, removed at exit). Every call is
 * reported as one JSON line on stdout (one write(2)):
 *   {"kind":"workload","case":...,"pid":...,"tid":...,"n":N,"s":ADDR,"str":"...","buf":ADDR,"buf_hex":"...",
 *    "len":L,"ret":R,"mapped_before":[0|1],"mapped_after":[0|1]}
 * "mapped" is the page-table presence of s's page (from /proc/self/pagemap, which faults nothing in): the
 * "untouched" case passes a pointer into a private file mapping nothing has touched, and the function
 * never touches it either, so only a reader that faults pages in (a sleepable BPF program) can read it.
 * It also calls libc's openat once (case "openat"), for probes on a shared library.
 *
 * `uprobe_target recurse`: uprobe_recursive_fn(3), which calls itself down to 0 (4 calls, nested).
 * `uprobe_target block`: reads a line on stdin, then calls uprobe_block_fn, which never returns (it reads a
 * pipe nobody writes): a call in flight until the process is killed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workload.h"

__attribute__((noinline, used, visibility("default"))) int uprobe_target_fn(int n, const char *s,
									      const unsigned char *buf, long len)
{
	(void)s;
	(void)buf;
	(void)len;
	__asm__ volatile("" ::: "memory");
	return n + 1000;
}

__attribute__((noinline, used, visibility("default"))) int uprobe_recursive_fn(int depth)
{
	__asm__ volatile("" ::: "memory");
	return depth > 0 ? uprobe_recursive_fn(depth - 1) + 1 : 0;
}

__attribute__((noinline, used, visibility("default"))) int uprobe_block_fn(int fd)
{
	char c;
	return (int)read(fd, &c, 1);
}

static int other_modes(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "recurse"))
		return uprobe_recursive_fn(3) == 3 ? 0 : 1;
	if (argc > 1 && !strcmp(argv[1], "block")) {
		char line[64];
		int p[2];
		if (pipe(p) || read(0, line, sizeof(line)) <= 0)
			die("block: pipe or stdin");
		return uprobe_block_fn(p[0]);
	}
	return -1;
}

static void report(const char *name, int n, const char *s, const char *shown, const unsigned char *buf,
		   const char *buf_hex, long len, int before, int ret, int after)
{
	char line[2048];
	int k = snprintf(line, sizeof(line) - 1,
			 "{\"kind\":\"workload\",\"case\":\"%s\",\"pid\":%d,\"tid\":%ld,\"n\":%d,\"s\":%lu,\"str\":\"%s\","
			 "\"buf\":%lu,\"buf_hex\":\"%s\",\"len\":%ld,\"ret\":%d,\"mapped_before\":[%d],"
			 "\"mapped_after\":[%d]}\n",
			 name, getpid(), (long)syscall(SYS_gettid), n, (unsigned long)(uintptr_t)s, shown,
			 (unsigned long)(uintptr_t)buf, buf_hex, len, ret, before, after);
	if (write(1, line, k) != k)
		die("write");
}

int main(int argc, char **argv)
{
	int mode = other_modes(argc, argv);
	if (mode >= 0)
		return mode;
	const char *dir = getenv("WORKLOAD_DIR") ? getenv("WORKLOAD_DIR") : "/tmp";
	char path[512];
	snprintf(path, sizeof(path), "%s/uprobe_target.%d", dir, getpid());

	/* resident: a string and 8 bytes on the (touched) stack */
	char str[] = "resident-string";
	unsigned char buf[8] = {0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03};
	int r = uprobe_target_fn(1, str, buf, sizeof(buf));
	report("resident", 1, str, str, buf, "deadbeef00010203", sizeof(buf), mapped(str), r, mapped(str));

	/* untouched: string at offset 0, 16 bytes at offset 2048 of a file page mapped but never touched */
	static const char text[] = "untouched-page-string";
	static const unsigned char bytes[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
	unsigned char page[PAGE] = {0};
	memcpy(page, text, sizeof(text));
	memcpy(page + 2048, bytes, sizeof(bytes));
	int fd = open(path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, page, PAGE) != PAGE)
		die(path);
	char *m = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0); /* no MAP_POPULATE */
	if (m == MAP_FAILED)
		die("mmap");
	close(fd);
	int before = mapped(m);
	r = uprobe_target_fn(2, m, (const unsigned char *)m + 2048, sizeof(bytes));
	int after = mapped(m);
	report("untouched", 2, m, text, (const unsigned char *)m + 2048, "0102030405060708090a0b0c0d0e0f10",
	       sizeof(bytes), before, r, after);

	/* null pointers */
	r = uprobe_target_fn(3, NULL, NULL, 0);
	report("null", 3, NULL, "", NULL, "", 0, 0, r, 0);

	/* libc's openat, for a probe on a shared library */
	char host[] = "/etc/hostname";
	r = openat(AT_FDCWD, host, O_RDONLY | O_CLOEXEC);
	report("openat", AT_FDCWD, host, host, NULL, "", O_RDONLY | O_CLOEXEC, mapped(host), r, mapped(host));
	if (r >= 0)
		close(r);

	unlink(path);
	linger(300);
	return 0;
}
