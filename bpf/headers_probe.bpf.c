// SPDX-License-Identifier: GPL-2.0
/* `tracer doctor`'s proof that bcc compiles against the kernel headers tracer chose: the kernel headers
 * tracer's programs pull in (bcc's helpers include linux/sched.h and friends), one function that uses
 * them. Compiled only, never loaded. */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

int tracer_headers_probe(struct pt_regs *ctx)
{
	return (bpf_get_current_pid_tgid() & 1) + (int)sizeof(struct task_struct) * 0;
}
