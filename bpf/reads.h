/* Helpers shared by bpf/trace.bpf.c and bpf/uprobe.bpf.c: the clamp the verifier needs, the filters
 * that use no map, and the read of one pointer argument into a record's data area (nofault, and in
 * sleepable programs with bpf_copy_from_user as fallback).
 *
 * Only map-free code lives here: bcc rewrites map syntax (`m.lookup()`) in the main source file alone,
 * and refuses it inside macros, so the pid/tid filters and the counters stay in each .bpf.c file.
 */
#ifndef TRACER_READS_H
#define TRACER_READS_H

#include "record.h"

/* v clamped to max, in a form the verifier sees (the compiler may otherwise test a copy of v). */
#define CLAMP(v, max) asm volatile("if %[x] <= %[m] goto +1; %[x] = %[m]" : [x] "+r"(v) : [m] "i"(max))

#ifdef TRACER_COPY_STR_KFUNC
/* The kfunc bpf_copy_from_user_str(void *dst, u32 dst__sz, const void __user *src, u64 flags)
 * (kernel/bpf/helpers.c, Linux 6.12+, KF_SLEEPABLE, in the kfunc set of every program type): like
 * bpf_probe_read_user_str (returns the length with the NUL, or a negative errno) but faults pages in.
 * bcc cannot emit kfunc calls, so the call goes to a helper number no kernel has; tracer/sleepable.py
 * rewrites those calls into kfunc calls (src_reg BPF_PSEUDO_KFUNC_CALL, imm = the kfunc's BTF id)
 * before loading. Defined only where the kernel's BTF has the kfunc. */
#define KFUNC_COPY_FROM_USER_STR 0x7ff0
static int (*copy_from_user_str)(void *dst, __u32 size, const void *src, __u64 flags) =
	(void *)KFUNC_COPY_FROM_USER_STR;
#endif

/* The filters of struct tracer_conf that need no map: uid and comm. With CF_COMM, the task's comm is
 * left in `comm` (the caller's record needs it too: one helper call, not two). */
static __always_inline int conf_match_comm(struct tracer_conf *c, char *comm)
{
	if ((c->flags & CF_UID) && (__u32)bpf_get_current_uid_gid() != c->uid)
		return 0;
	if (c->flags & CF_COMM) {
		bpf_get_current_comm(comm, TASK_COMM_LEN);
		__u64 *a = (__u64 *)comm, *b = (__u64 *)c->comm;
		if (a[0] != b[0] || a[1] != b[1])
			return 0;
	}
	return 1;
}

static __always_inline int conf_match(struct tracer_conf *c)
{
	char comm[TASK_COMM_LEN] = {};
	return conf_match_comm(c, comm);
}

/* Read one pointer argument to data[at]. Returns the RS_* status; sets *err and *len. Structs are
 * read with one helper call so that a struct is never half real and half zero.
 *
 * A nofault read first. When it fails and the program is sleepable, the data is copied with
 * bpf_copy_from_user (strings: the _str kfunc where the kernel has it, else bpf_copy_from_user faults
 * the string's page(s) in and the nofault string helper reads again), and RSRC_FAULTED_IN is set in
 * *rf. `sleepable` is a constant at every call site, so nofault programs never contain the calls. */
static __always_inline int read_user(__u8 *data, __u32 at, __u8 kind, __u64 ptr, __u32 want, __u32 cap,
				     __s16 *err, __u16 *len, __u8 *rf, const int sleepable)
{
	*err = 0;
	*len = 0;
	if (!ptr)
		return RS_NULL;
	if (at > DATA_CAP - READ_CAP - 1)
		return RS_NOROOM;
	__u64 pos = at;
	CLAMP(pos, DATA_CAP - READ_CAP - 1);
	if (kind == RK_STR) {
		int n = bpf_probe_read_user_str(&data[pos], STR_CAP, (void *)ptr);
		if (n < 0 && sleepable) {
#ifdef TRACER_COPY_STR_KFUNC
			n = copy_from_user_str(&data[pos], STR_CAP, (void *)ptr, 0);
			if (n >= 0)
				*rf |= RSRC_FAULTED_IN;
#else
			char one = 0;
			int e = bpf_copy_from_user(&one, 1, (void *)ptr);
			if (e < 0) {
				*err = e;
				return RS_FAULT;
			}
			*rf |= RSRC_FAULTED_IN;
			n = bpf_probe_read_user_str(&data[pos], STR_CAP, (void *)ptr);
			if (n < 0) { /* the string runs on into the next page: fault that one in too */
				bpf_copy_from_user(&one, 1, (void *)((ptr | 4095) + 1));
				n = bpf_probe_read_user_str(&data[pos], STR_CAP, (void *)ptr);
			}
#endif
		}
		if (n < 0) {
			*err = n;
			return RS_FAULT;
		}
		*len = n > 0 ? n - 1 : 0;
		if (n == STR_CAP) {
			/* Filled the buffer: longer unless the byte at the cap is the NUL. */
			char next = 0;
			if (bpf_probe_read_user(&next, 1, (void *)(ptr + STR_CAP - 1)) || next)
				return RS_TRUNC;
		}
		return RS_OK;
	}
	__u64 n = want;
	int st = RS_OK;
	if (cap > READ_CAP)
		cap = READ_CAP;
	if (n > cap) {
		n = cap;
		st = RS_TRUNC;
	}
	CLAMP(n, READ_CAP);
	int e = bpf_probe_read_user(&data[pos], n, (void *)ptr);
	if (e < 0 && sleepable) {
		e = bpf_copy_from_user(&data[pos], n, (void *)ptr);
		if (e == 0)
			*rf |= RSRC_FAULTED_IN;
	}
	if (e < 0) {
		*err = e;
		return RS_FAULT;
	}
	*len = n;
	return st;
}

#endif
