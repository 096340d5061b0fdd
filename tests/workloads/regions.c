/* Prints where its objects live, then maps a page per "mmap" line on stdin until stdin closes.
 * tests/test_regions.py resolves the printed addresses while this waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void regions_lib_report(void);

const char regions_rodata_str[] = "regions rodata object";
int regions_data_var = 42;
int regions_bss_var;
char regions_big_bss[1 << 20];

int main(void)
{
	const char *literal = "regions literal marker 5e1f";
	int stack_var = 7;
	char *heap = malloc(64);
	char line[64];

	printf("literal=%p\n", (void *)literal);
	printf("rodata=%p\n", (void *)regions_rodata_str);
	printf("data=%p\n", (void *)&regions_data_var);
	printf("bss=%p\n", (void *)&regions_bss_var);
	printf("big_bss=%p\n", (void *)regions_big_bss);
	printf("heap=%p\n", (void *)heap);
	printf("stack=%p\n", (void *)&stack_var);
	regions_lib_report();
	printf("ready\n");
	fflush(stdout);
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "mmap\n") == 0) {
			void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			printf("mmap=%p\n", p);
			fflush(stdout);
		}
	}
	return stack_var + heap[0] * 0;
}
