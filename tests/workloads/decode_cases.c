/* Calls with known integer arguments, for the symbolic decoding tests (tests/test_symbols_live.py).
 * Every call is made with syscall(2) where the C library might pick another syscall or other flags,
 * so the traced arguments are exactly those written here. Failed calls: shutdown (ENOTCONN) and the
 * second wait4 (ECHILD). One JSON line on stdout at the end:
 *   {"kind":"workload","pid","child1","child2","child3","map":ADDR,"clone_args":ADDR,"handler":ADDR}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/perf_event.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "workload.h"

static void on_usr1(int sig)
{
	(void)sig;
}

int main(void)
{
	/* %net */
	int s = syscall(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int u = syscall(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	int v6 = syscall(SYS_socket, AF_INET6, SOCK_DGRAM, IPPROTO_UDP);
	if (s < 0 || u < 0 || v6 < 0)
		die("socket");
	int one = 1;
	if (syscall(SYS_setsockopt, s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		die("setsockopt");
	syscall(SYS_shutdown, s, SHUT_RDWR); /* ENOTCONN: the arguments are what matter */

	/* fcntl and access */
	if (syscall(SYS_fcntl, u, F_SETFD, FD_CLOEXEC) || syscall(SYS_fcntl, u, F_SETFL, O_NONBLOCK) ||
	    syscall(SYS_fcntl, u, F_GETFL) < 0)
		die("fcntl");
	syscall(SYS_access, "/etc/hostname", R_OK | W_OK);
	syscall(SYS_faccessat, AT_FDCWD, "/", X_OK);

	/* ioctl: a tty request on a pipe, a perf request on a bad fd (EBADF), a number no header names
	 * (ENOTTY); the request numbers are the C headers' (gcc's), not the tracer's own reading */
	int pfd[2], avail = -1;
	if (pipe(pfd) || syscall(SYS_ioctl, pfd[0], FIONREAD, &avail) || avail != 0)
		die("FIONREAD");
	syscall(SYS_ioctl, -1, PERF_EVENT_IOC_ENABLE, 0);
	syscall(SYS_ioctl, pfd[0], _IOR(0xF7, 0xE3, int), 0);
	close(pfd[0]);
	close(pfd[1]);

	/* mmap family: a length no loader uses (7 pages) identifies these calls */
	void *p = (void *)syscall(SYS_mmap, NULL, 7 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (syscall(SYS_mprotect, p, 7 * PAGE, PROT_READ) || syscall(SYS_mprotect, p, PAGE, PROT_NONE))
		die("mprotect");

	/* signals */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die("signal");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaddset(&sa.sa_mask, SIGINT);
	if (sigaction(SIGUSR1, &sa, NULL))
		die("sigaction");
	syscall(SYS_kill, getpid(), SIGUSR1);
	uint64_t block = (1ULL << (SIGINT - 1)) | (1ULL << (SIGTERM - 1)); /* the kernel's 64-bit sigset_t */
	if (syscall(SYS_rt_sigprocmask, SIG_BLOCK, &block, NULL, sizeof(block)) ||
	    syscall(SYS_rt_sigprocmask, SIG_UNBLOCK, &block, NULL, sizeof(block)))
		die("rt_sigprocmask");
	if (syscall(SYS_prctl, PR_GET_DUMPABLE, 0, 0, 0, 0) < 0)
		die("prctl");
	syscall(SYS_tgkill, getpid(), (pid_t)syscall(SYS_gettid), 0);

	/* %process: clone with only an exit signal, then a child killed with SIGTERM */
	long c1 = syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0);
	if (c1 == 0) {
		pause();
		_exit(0);
	}
	if (c1 < 0)
		die("clone");
	syscall(SYS_kill, c1, SIGTERM);
	int st;
	syscall(SYS_wait4, c1, &st, 0, NULL);
	syscall(SYS_wait4, -1, &st, WNOHANG, NULL); /* ECHILD */

	/* clone3 with CLONE_PIDFD and an exit signal, reaped with waitid */
	int pidfd = -1;
	struct clone_args ca;
	memset(&ca, 0, sizeof(ca));
	ca.flags = CLONE_PIDFD;
	ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
	ca.exit_signal = SIGCHLD;
	long c2 = syscall(SYS_clone3, &ca, sizeof(ca));
	if (c2 == 0)
		syscall(SYS_exit, 3);
	if (c2 < 0)
		die("clone3");
	siginfo_t info;
	syscall(SYS_waitid, P_PID, c2, &info, WEXITED, NULL);

	/* fork-like clone as glibc makes it; the child makes one call (kill with signal 0) while the parent
	 * is blocked in wait4, so the parent's wait4 completes after a line it began before */
	long c3 = syscall(SYS_clone, CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | SIGCHLD, 0, NULL, &st, 0);
	if (c3 == 0) {
		wait_blocked(getppid(), SYS_wait4);
		syscall(SYS_kill, getpid(), 0);
		syscall(SYS_exit, 0);
	}
	if (c3 < 0)
		die("clone");
	syscall(SYS_wait4, c3, &st, __WALL, NULL);
	out("{\"kind\":\"workload\",\"pid\":%d,\"child1\":%ld,\"child2\":%ld,\"child3\":%ld,\"map\":%lu,\"clone_args\":%lu,\"handler\":%lu}",
	    getpid(), c1, c2, c3, (unsigned long)p, (unsigned long)&ca, (unsigned long)on_usr1);
	return 0;
}
