/* execve/execveat argv and envp: NULL-terminated arrays of strings (RK_STRV, layout in record.h).
 *
 * strv_read() reads the caller's array (at entry, and again at exit of a failed exec, whose old memory is
 * still there); mm_block() reads the kernel's own copy from the new process's memory at exit of a
 * successful exec (mm->arg_start..arg_end or env_start..env_end: written by the kernel during the exec,
 * resident, and untouched by user space yet). Offsets of task_struct.mm and mm_struct.* are KO_* defines
 * from the running kernel's BTF (tracer/kstructs.py), like bpf/kfile.h's.
 *
 * Loop state lives in the record (map memory) rather than registers, for the verifier (see kfile.h).
 */
#ifndef TRACER_STRV_H
#define TRACER_STRV_H

#include "record.h"

/* Bytes one array may take in the data area at entry: room is left for the other array and for the
 * kernel's copies at exit. */
#define STRV_BUDGET 640

static __always_inline __u32 strv_read(__u8 *data, __u32 at, __u64 vec)
{
	__u64 hpos = at;
	if (hpos > DATA_CAP - sizeof(struct strv))
		return 0;
	CLAMP(hpos, DATA_CAP - sizeof(struct strv));
	struct strv *h = (struct strv *)&data[hpos];
	h->n = 0;
	h->pad = 0;
	h->err = 0;
	h->size = sizeof(struct strv);
	h->status = RS_TRUNC; /* unless the NULL or a fault comes first */
	for (int i = 0; i < STRV_MAX; i++) {
		__u64 p = 0;
		int e = bpf_probe_read_user(&p, sizeof(p), (void *)(vec + i * 8));
		if (e < 0) {
			h->status = RS_FAULT;
			h->err = e;
			break;
		}
		if (!p) {
			h->status = RS_OK;
			break;
		}
		__u64 used = h->size;
		if (used > STRV_BUDGET)
			break;
		__u64 pos = hpos + used;
		if (pos > DATA_CAP - STRV_ELEM_CAP - sizeof(struct strv_elem))
			break;
		CLAMP(pos, DATA_CAP - STRV_ELEM_CAP - sizeof(struct strv_elem));
		struct strv_elem *el = (struct strv_elem *)&data[pos];
		int n = bpf_probe_read_user_str(&data[pos + sizeof(struct strv_elem)], STRV_ELEM_CAP, (void *)p);
		el->pad = 0;
		if (n < 0) {
			el->status = RS_FAULT;
			el->err = n;
			el->len = 0;
		} else {
			el->status = RS_OK;
			el->err = 0;
			el->len = n > 0 ? n - 1 : 0;
			if (n == STRV_ELEM_CAP) { /* filled: longer unless the byte at the cap is the NUL */
				char next = 0;
				if (bpf_probe_read_user(&next, 1, (void *)(p + STRV_ELEM_CAP - 1)) || next)
					el->status = RS_TRUNC;
			}
		}
		h->size += sizeof(struct strv_elem) + el->len;
		h->n++;
	}
	return h->size;
}

/* The kernel's copy of argv (env = 0) or envp (env = 1) into data[s->exit_off...], chunk by chunk;
 * sets s->exit_status/exit_err/exit_len. */
static __always_inline void mm_block(__u8 *data, struct read_slot *s, int env)
{
	__u64 task = bpf_get_current_task();
	__u64 mm = kptr(task + KO_TASK_MM);
	__u64 start = mm ? kptr(mm + (env ? KO_MM_ENV_START : KO_MM_ARG_START)) : 0;
	__u64 end = mm ? kptr(mm + (env ? KO_MM_ENV_END : KO_MM_ARG_END)) : 0;
	s->exit_len = 0;
	s->exit_err = 0;
	if (!start || end < start) {
		s->exit_status = RS_FAULT;
		s->exit_err = -14;
		return;
	}
	__u64 len = end - start;
	s->exit_status = RS_OK;
	for (int i = 0; i < DATA_CAP / STRV_ELEM_CAP; i++) {
		__u64 done = s->exit_len;
		if (done >= len)
			break;
		__u64 pos = s->exit_off + done;
		if (pos > DATA_CAP - STRV_ELEM_CAP - 1) {
			s->exit_status = RS_TRUNC;
			break;
		}
		CLAMP(pos, DATA_CAP - STRV_ELEM_CAP - 1);
		__u64 chunk = len - done;
		if (chunk > STRV_ELEM_CAP)
			chunk = STRV_ELEM_CAP;
		CLAMP(chunk, STRV_ELEM_CAP);
		int e = bpf_probe_read_user(&data[pos], chunk, (void *)(start + done));
		if (e < 0) {
			s->exit_status = RS_FAULT;
			s->exit_err = e;
			break;
		}
		s->exit_len += chunk;
	}
	if (s->exit_status == RS_OK && s->exit_len < len)
		s->exit_status = RS_TRUNC;
}

#endif
