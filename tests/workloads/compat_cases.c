/* raw_syscalls attach mode (tests/test_attach_raw.py): an x86_64 writev, then ia32 syscalls made with
 * int $0x80 from this 64-bit process (TS_COMPAT): getpid is number 20 there, writev's number on x86_64,
 * and write is 4 (x86_64's stat). A tracer reading raw syscall numbers without checking for compat
 * calls would report the ia32 ones as a writev and a stat. Prints what it did, as JSON.
 */
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <sys/uio.h>

#include "workload.h"

static long int80(long nr, long a, long b, long c)
{
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return ret;
}

int main(void)
{
	int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("/dev/null");
	char msg[] = "compat";
	struct iovec iov = {msg, sizeof(msg) - 1};
	long w = syscall(SYS_writev, fd, &iov, 1);
	long getpid32 = int80(20, 0, 0, 0);           /* ia32 getpid */
	long write32 = int80(4, fd, 0, 0);            /* ia32 write(fd, NULL, 0) */
	out("{\"kind\":\"workload\",\"pid\":%d,\"fd\":%d,\"writev\":%ld,\"int80_getpid\":%ld,\"int80_write\":%ld}", getpid(), fd, w,
	    getpid32, write32);
	return 0;
}
