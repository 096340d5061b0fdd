/* Writer-side cases for the user_events watch: argv[1] is a user_events_data path (a stand-in regular
 * file under a fake tracefs root on kernels without user_events). Both writes fail with EFAULT:
 * writev whose first iovec is unreadable, and write() from an unmapped page. Prints one JSON line. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int fd = open(argv[1], O_RDWR);
	if (fd < 0)
		return 3;
	struct iovec iov[2] = {{(void *)1, 4}, {(void *)1, 8}};
	ssize_t r1 = writev(fd, iov, 2);
	int e1 = errno;
	char *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ssize_t r2 = write(fd, page, 16);
	int e2 = errno;
	printf("{\"pid\":%d,\"fd\":%d,\"writev\":%zd,\"writev_errno\":%d,\"write\":%zd,\"write_errno\":%d,\"page\":%lu}\n",
	       getpid(), fd, r1, e1, r2, e2, (unsigned long)page);
	fflush(stdout);
	close(fd);
	return 0;
}
