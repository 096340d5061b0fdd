/* Shared library half of regions.c. It prints its own addresses: an executable that took
 * &regions_lib_function itself would get its own PLT stub when built -no-pie. */
#include <stdio.h>

char regions_lib_big_bss[1 << 20];

int regions_lib_function(int x)
{
	return x + 1;
}

void regions_lib_report(void)
{
	printf("lib_function=%p\n", (void *)regions_lib_function);
	printf("lib_big_bss=%p\n", (void *)regions_lib_big_bss);
}
