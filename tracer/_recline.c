/* tracer._recline: `trace --json`'s line of a common-shape record, made in C (tracer/recjson.py says which
 * records and what a line holds).
 *
 * Why C: the line is ~900 bytes of ~30 values. Python's fastest way to make it (one generated f-string per
 * layout, tracer/recjson.py) costs ~2.9 us per event, ~70% of the --json consumer's CPU; the f-string alone
 * is ~1.7 us, and every Python formulation measured was as slow or slower. Here the same line is one pass
 * over the record into one buffer (~0.3-0.5 us).
 *
 * What is NOT here: the line's skeleton and every rendering of a memoised value. recjson.py describes the
 * line of a layout as a template (literal fragments and named values, in order), from which it also makes
 * the Python f-string; this code follows that template. Memoised values (comm, ret/ret_str, symbols,
 * open_how/sockaddr values, the date of a second) are looked up in recjson's own memo dicts, and a miss
 * calls recjson's miss function, so each of them has one renderer. What C renders itself: integers in
 * decimal, strings escaped as json's encode_basestring_ascii does, and the choice among fragments it is
 * given. A record it does not take whole is handed back: None (decode it), or the layout's Python function
 * (a successful open-family call, or anything unusual such as a timestamp beyond 63 bits).
 *
 * Records are untrusted (capture files are replayed through the same path): every read is bounds-checked
 * against the record's length, and a read's bytes are sliced as Python slices them (clamped to the record).
 * The record layout is bpf/record.h itself (offsetof); OFFSETS lets recjson.py refuse a module built from
 * another record.h than the one tracer/layout.py parsed. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <linux/types.h>
#include "record.h"

#define DATA_OFF offsetof(struct sys_record, data)
#define HDR_END(n) (offsetof(struct sys_record, reads) + (size_t)(n) * sizeof(struct read_slot))

enum op {
	OP_LIT, OP_TS, OP_CPU, OP_PID, OP_TID, OP_UID, OP_COMM, OP_MID, OP_ARG, OP_STR, OP_VAL, OP_SY, OP_RF,
	OP_ADDR, OP_LEN, OP_SIZE, OP_VERIF, OP_RC, OP_DAY, OP_US,
};
static const char *const OP_NAMES[] = {
	"lit", "ts", "cpu", "pid", "tid", "uid", "comm", "mid", "arg", "str", "val", "sy", "rf",
	"addr", "len", "size", "verif", "rc", "day", "us",
};
enum conv { CONV_NONE, CONV_S32, CONV_U32, CONV_U16, CONV_S64 };
static const char *const CONV_NAMES[] = {"none", "s32", "u32", "u16", "s64"};

struct item {
	int op;
	int i; /* argument index */
	const char *s; /* OP_LIT */
	Py_ssize_t n;
};

struct lit {
	const char *s;
	Py_ssize_t n;
};

struct read {
	int j; /* the slot's index in the record; -1: argument i is not read */
	int kind;
	/* last struct value looked up (OP_VAL): its key and fragment */
	PyObject *last_raw, *last_val;
	__u32 last_want;
};

struct sym {
	PyObject *memo, *miss; /* borrowed from spec; NULL: no symbol */
	PyObject *last; /* the last fragment (or None) */
	__u64 last_a;
	int has_last;
};

typedef struct {
	PyObject_HEAD
	PyObject *spec; /* owns everything borrowed below */
	struct item *items;
	Py_ssize_t nitems;
	int nslots; /* the record's header must hold this many read slots */
	int is_open;
	long long offset;
	struct read reads[MAX_ARGS];
	int conv[MAX_ARGS];
	struct sym syms[MAX_ARGS];
	int sym_order[MAX_ARGS], nsyms;
	PyObject *comms, *comm_miss, *rets, *ret_miss, *values, *value_miss, *clock, *when, *group, *pyfn;
	struct lit verified, unverified[2], mid0, mid1, rc, noret_rf, size, args_str;
	/* caches of the last value of each memo: a record of the same comm, return value, second as the
	 * previous one costs no dict look-up */
	char last_comm_raw[TASK_COMM_LEN];
	PyObject *last_comm, *last_ret, *last_day;
	long long last_ret_v, last_sec;
	char *lits; /* the template's literals, joined */
} LineObject;

static PyTypeObject LineType;

/* -- the output buffer --------------------------------------------------------------------------------- */

/* One call's output: on the stack, moved to the heap if a line outgrows it. Not the Line's own: a memo's
 * miss function runs Python, which may (another thread) use the same Line meanwhile. */
struct out {
	char *buf;
	size_t cap;
	int heap;
	char stack[16384];
};

static int grow(struct out *self, size_t need)
{
	size_t cap = self->cap;
	char *b;
	while (cap < need)
		cap *= 2;
	b = self->heap ? PyMem_Realloc(self->buf, cap) : PyMem_Malloc(cap);
	if (!b) {
		PyErr_NoMemory();
		return -1;
	}
	if (!self->heap)
		memcpy(b, self->buf, self->cap);
	self->buf = b;
	self->cap = cap;
	self->heap = 1;
	return 0;
}

#define ENSURE(self, len, n) \
	do { \
		if ((len) + (n) > (self)->cap && grow((self), (len) + (n)) < 0) \
			goto fail; \
	} while (0)

static const char DIGITS2[] = "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
			      "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
			      "8081828384858687888990919293949596979899";

static size_t put_u64(char *out, __u64 v)
{
	char tmp[24];
	size_t at = sizeof(tmp), n;
	while (v >= 100) { /* two digits per division */
		unsigned d = (unsigned)(v % 100) * 2;
		v /= 100;
		tmp[--at] = DIGITS2[d + 1];
		tmp[--at] = DIGITS2[d];
	}
	if (v >= 10) {
		tmp[--at] = DIGITS2[v * 2 + 1];
		tmp[--at] = DIGITS2[v * 2];
	} else {
		tmp[--at] = (char)('0' + v);
	}
	n = sizeof(tmp) - at;
	memcpy(out, tmp + at, n);
	return n;
}

static size_t put_s64(char *out, long long v)
{
	if (v < 0) {
		out[0] = '-';
		return 1 + put_u64(out + 1, (__u64)0 - (__u64)v);
	}
	return put_u64(out, (__u64)v);
}

static const char HEX[] = "0123456789abcdef";

static size_t put_u_escape(char *out, unsigned c)
{
	out[0] = '\\';
	out[1] = 'u';
	out[2] = HEX[(c >> 12) & 0xf];
	out[3] = HEX[(c >> 8) & 0xf];
	out[4] = HEX[(c >> 4) & 0xf];
	out[5] = HEX[c & 0xf];
	return 6;
}

/* One code point as json's encode_basestring_ascii writes it. */
static size_t put_char(char *out, Py_UCS4 c)
{
	switch (c) {
	case '"': out[0] = '\\'; out[1] = '"'; return 2;
	case '\\': out[0] = '\\'; out[1] = '\\'; return 2;
	case '\n': out[0] = '\\'; out[1] = 'n'; return 2;
	case '\r': out[0] = '\\'; out[1] = 'r'; return 2;
	case '\t': out[0] = '\\'; out[1] = 't'; return 2;
	case '\b': out[0] = '\\'; out[1] = 'b'; return 2;
	case '\f': out[0] = '\\'; out[1] = 'f'; return 2;
	}
	if (c >= 0x20 && c < 0x7f) {
		out[0] = (char)c;
		return 1;
	}
	if (c >= 0x10000) { /* a surrogate pair */
		c -= 0x10000;
		put_u_escape(out, 0xd800 | ((c >> 10) & 0x3ff));
		return 6 + put_u_escape(out + 6, 0xdc00 | (c & 0x3ff));
	}
	return put_u_escape(out, c);
}

/* The JSON string of UTF-8 bytes, quoted, appended at *len. 1: done; 0: not valid UTF-8 (as
 * bytes.decode('utf-8') judges it: the record is decoded instead); -1: error. */
static int put_str(struct out *self, size_t *len, const unsigned char *p, Py_ssize_t n)
{
	Py_ssize_t k;
	int ascii = 1;
	size_t at;
	for (k = 0; k < n; k++)
		if (p[k] >= 0x80) {
			ascii = 0;
			break;
		}
	if (ascii) {
		ENSURE(self, *len, 6 * (size_t)n + 2);
		at = *len;
		self->buf[at++] = '"';
		for (k = 0; k < n; k++) {
			Py_ssize_t run = k;
			while (run < n && p[run] >= 0x20 && p[run] < 0x7f && p[run] != '"' && p[run] != '\\')
				run++; /* what needs no escape, copied at once */
			memcpy(self->buf + at, p + k, (size_t)(run - k));
			at += (size_t)(run - k);
			if ((k = run) < n)
				at += put_char(self->buf + at, p[k]);
		}
		self->buf[at++] = '"';
		*len = at;
		return 1;
	} else {
		PyObject *u = PyUnicode_DecodeUTF8((const char *)p, n, "strict");
		int kind;
		const void *data;
		Py_ssize_t m;
		if (!u) {
			if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
				return -1;
			PyErr_Clear();
			return 0;
		}
		kind = PyUnicode_KIND(u);
		data = PyUnicode_DATA(u);
		m = PyUnicode_GET_LENGTH(u);
		if ((size_t)*len + 12 * (size_t)m + 2 > self->cap && grow(self, *len + 12 * (size_t)m + 2) < 0) {
			Py_DECREF(u);
			return -1;
		}
		at = *len;
		self->buf[at++] = '"';
		for (k = 0; k < m; k++)
			at += put_char(self->buf + at, PyUnicode_READ(kind, data, k));
		self->buf[at++] = '"';
		*len = at;
		Py_DECREF(u);
		return 1;
	}
fail:
	return -1;
}

/* A memo's fragment (an ASCII str) appended; -1: error, 0: not an ASCII str (the line is left to Python). */
static int put_frag(struct out *self, size_t *len, PyObject *s)
{
	Py_ssize_t n;
	if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s))
		return 0;
	n = PyUnicode_GET_LENGTH(s);
	ENSURE(self, *len, (size_t)n);
	memcpy(self->buf + *len, PyUnicode_DATA(s), (size_t)n);
	*len += (size_t)n;
	return 1;
fail:
	return -1;
}

static inline int put_lit(struct out *self, size_t *len, const struct lit *l)
{
	ENSURE(self, *len, (size_t)l->n);
	memcpy(self->buf + *len, l->s, (size_t)l->n);
	*len += (size_t)l->n;
	return 0;
fail:
	return -1;
}

/* memo.get(key) or miss(*args): a new reference, NULL on error. Steals key. */
static PyObject *memo_get(PyObject *memo, PyObject *key, PyObject *miss, PyObject *args)
{
	PyObject *v;
	if (!key)
		return NULL;
	v = PyDict_GetItemWithError(memo, key);
	if (v) {
		int t;
		Py_INCREF(v); /* before its truth test: that may run Python, which may drop the memo's reference */
		t = PyObject_IsTrue(v);
		if (t == 1) {
			Py_DECREF(key);
			return v;
		}
		Py_DECREF(v);
	}
	if (PyErr_Occurred()) {
		Py_DECREF(key);
		return NULL;
	}
	if (args) {
		v = PyObject_CallObject(miss, args);
	} else {
		v = PyObject_CallOneArg(miss, key);
	}
	Py_DECREF(key);
	return v;
}

/* Argument `raw` as decode.int_value converts it: as a Python int, and in decimal. */
static PyObject *arg_obj(int conv, __u64 raw)
{
	switch (conv) {
	case CONV_S32: return PyLong_FromLong((long)(__s32)(__u32)raw);
	case CONV_U32: return PyLong_FromUnsignedLongLong(raw & 0xffffffffu);
	case CONV_U16: return PyLong_FromUnsignedLongLong(raw & 0xffffu);
	case CONV_S64: return PyLong_FromLongLong((long long)(__s64)raw);
	}
	return PyLong_FromUnsignedLongLong(raw);
}

static size_t put_arg(char *out, int conv, __u64 raw)
{
	switch (conv) {
	case CONV_S32: return put_s64(out, (__s32)(__u32)raw);
	case CONV_U32: return put_u64(out, raw & 0xffffffffu);
	case CONV_U16: return put_u64(out, raw & 0xffffu);
	case CONV_S64: return put_s64(out, (__s64)raw);
	}
	return put_u64(out, raw);
}

/* The fragment of argument i's symbol (a str), or None; a new reference. */
static PyObject *sym_frag(struct sym *s, __u64 a, PyObject *key)
{
	PyObject *v;
	if (s->has_last && s->last_a == a) {
		Py_INCREF(s->last);
		return s->last;
	}
	v = PyDict_GetItemWithError(s->memo, key);
	if (v)
		Py_INCREF(v);
	else if (PyErr_Occurred())
		return NULL;
	else if (!(v = PyObject_CallOneArg(s->miss, key)))
		return NULL;
	Py_XSETREF(s->last, Py_NewRef(v));
	s->last_a = a;
	s->has_last = 1;
	return v;
}

static PyObject *delegate(LineObject *self, PyObject *rec, PyObject *cpu)
{
	PyObject *args[2] = {rec, cpu};
	return PyObject_Vectorcall(self->pyfn, args, 2, NULL);
}

/* line(rec, cpu) -> (order key, statistics key, line) | None, as recjson's generated function returns. */
static PyObject *line_into(LineObject *self, PyObject *const *args, Py_ssize_t nargs, struct out *o)
{
	struct sys_record h;
	const unsigned char *p;
	Py_ssize_t rlen;
	PyObject *rec, *cpuobj, *v, *key = NULL, *line = NULL, *res;
	long long cpu, when_ns, sec, sub;
	__u64 ts, te, okey;
	const unsigned char *raw[MAX_ARGS];
	Py_ssize_t rawlen[MAX_ARGS];
	int noreturn, k, r;
	size_t len = 0;
	Py_ssize_t it;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "line(rec, cpu) takes 2 arguments");
		return NULL;
	}
	rec = args[0];
	cpuobj = args[1];
	if (!self->spec) {
		PyErr_SetString(PyExc_RuntimeError, "Line not made (its __init__ failed) or cleared");
		return NULL;
	}
	if (!PyBytes_CheckExact(rec) || !PyLong_CheckExact(cpuobj))
		return delegate(self, rec, cpuobj);
	cpu = PyLong_AsLongLong(cpuobj);
	if (cpu == -1 && PyErr_Occurred()) {
		PyErr_Clear();
		return delegate(self, rec, cpuobj);
	}
	p = (const unsigned char *)PyBytes_AS_STRING(rec);
	rlen = PyBytes_GET_SIZE(rec);
	if ((size_t)rlen < HDR_END(self->nslots))
		return delegate(self, rec, cpuobj);
	memcpy(&h, p, HDR_END(self->nslots));
	noreturn = !!(h.flags & RF_NORETURN);
	/* the common shape: each read whole at entry, of the kind this layout takes, not re-read or the same */
	for (k = 0; k < MAX_ARGS; k++) {
		const struct read_slot *sl;
		size_t start, end;
		if (self->reads[k].j < 0)
			continue;
		sl = &h.reads[self->reads[k].j];
		if (sl->enter_status != RS_OK || sl->kind != self->reads[k].kind ||
		    (sl->exit_status != RS_NONE &&
		     !(sl->exit_same && (sl->exit_status == RS_OK || sl->exit_status == RS_TRUNC))))
			Py_RETURN_NONE;
		start = DATA_OFF + sl->enter_off; /* rec[start:end], as Python slices it */
		end = start + sl->enter_len;
		if (start > (size_t)rlen)
			start = (size_t)rlen;
		if (end > (size_t)rlen)
			end = (size_t)rlen;
		raw[k] = p + start;
		rawlen[k] = (Py_ssize_t)(end - start);
	}
	ts = h.ts_enter;
	te = h.ts_exit;
	/* a successful open's line (its `opened`), or times beyond what the line's integers hold: Python's */
	if ((self->is_open && !noreturn && h.ret >= 0) || ts >> 63 || te >> 63 ||
	    __builtin_add_overflow((long long)ts, self->offset, &when_ns) || when_ns < 0)
		return delegate(self, rec, cpuobj);
	sec = when_ns / 1000000000LL;
	sub = when_ns % 1000000000LL;
	okey = noreturn ? ts : (te ? te : ts);

	for (it = 0; it < self->nitems; it++) {
		const struct item *item = &self->items[it];
		int i = item->i;
		ENSURE(o, len, 48); /* room for any number and the fixed fragments below */
		switch (item->op) {
		case OP_LIT:
			ENSURE(o, len, (size_t)item->n);
			memcpy(o->buf + len, item->s, (size_t)item->n);
			len += (size_t)item->n;
			break;
		case OP_TS: len += put_u64(o->buf + len, ts); break;
		case OP_CPU: len += put_s64(o->buf + len, cpu); break;
		case OP_PID: len += put_u64(o->buf + len, h.pid); break;
		case OP_TID: len += put_u64(o->buf + len, h.tid); break;
		case OP_UID: len += put_u64(o->buf + len, h.uid); break;
		case OP_ADDR: len += put_u64(o->buf + len, h.args[i]); break;
		case OP_LEN: len += put_u64(o->buf + len, (__u64)rawlen[i]); break;
		case OP_ARG: len += put_arg(o->buf + len, self->conv[i], h.args[i]); break;
		case OP_MID:
			if (noreturn)
				break;
			if (put_lit(o, &len, &self->mid0) < 0)
				goto fail;
			ENSURE(o, len, 48);
			len += put_u64(o->buf + len, te);
			if (put_lit(o, &len, &self->mid1) < 0)
				goto fail;
			ENSURE(o, len, 48);
			len += put_s64(o->buf + len, (long long)te - (long long)ts);
			break;
		case OP_SIZE: {
			__u32 want = h.reads[self->reads[i].j].want;
			if (!want)
				break;
			if (put_lit(o, &len, &self->size) < 0)
				goto fail;
			ENSURE(o, len, 24);
			len += put_u64(o->buf + len, want);
			break;
		}
		case OP_VERIF:
			if (put_lit(o, &len, h.reads[self->reads[i].j].exit_status != RS_NONE ? &self->verified
										    : &self->unverified[noreturn]) < 0)
				goto fail;
			break;
		case OP_RC:
			if ((h.flags & RF_EXIT_READS) && put_lit(o, &len, &self->rc) < 0)
				goto fail;
			break;
		case OP_US: { /* microseconds, zero-padded to 6 digits */
			long long us = sub / 1000;
			int d;
			for (d = 5; d >= 0; d--, us /= 10)
				o->buf[len + (size_t)d] = (char)('0' + us % 10);
			len += 6;
			break;
		}
		case OP_STR:
			r = put_str(o, &len, raw[i], rawlen[i]);
			if (r < 0)
				goto fail;
			if (r == 0)
				Py_RETURN_NONE; /* not UTF-8: decoded, kept with `hex` */
			break;
		case OP_COMM:
			if (!self->last_comm || memcmp(self->last_comm_raw, h.comm, TASK_COMM_LEN)) {
				v = memo_get(self->comms, PyBytes_FromStringAndSize(h.comm, TASK_COMM_LEN),
					     self->comm_miss, NULL);
				if (!v)
					goto fail;
				Py_XSETREF(self->last_comm, v);
				memcpy(self->last_comm_raw, h.comm, TASK_COMM_LEN);
			}
			if ((r = put_frag(o, &len, self->last_comm)) <= 0)
				goto bail;
			break;
		case OP_RF:
			if (noreturn) {
				if (put_lit(o, &len, &self->noret_rf) < 0)
					goto fail;
				break;
			}
			if (!self->last_ret || self->last_ret_v != h.ret) {
				v = memo_get(self->rets, PyLong_FromLongLong(h.ret), self->ret_miss, NULL);
				if (!v)
					goto fail;
				Py_XSETREF(self->last_ret, v);
				self->last_ret_v = h.ret;
			}
			if ((r = put_frag(o, &len, self->last_ret)) <= 0)
				goto bail;
			break;
		case OP_VAL: {
			struct read *rd = &self->reads[i];
			__u32 want = h.reads[rd->j].want;
			if (!rd->last_val || rd->last_want != want || PyBytes_GET_SIZE(rd->last_raw) != rawlen[i] ||
			    memcmp(PyBytes_AS_STRING(rd->last_raw), raw[i], (size_t)rawlen[i])) {
				PyObject *b = PyBytes_FromStringAndSize((const char *)raw[i], rawlen[i]);
				PyObject *vkey;
				if (!b)
					goto fail;
				vkey = Py_BuildValue("(iOk)", rd->kind, b, (unsigned long)want);
				v = vkey ? memo_get(self->values, Py_NewRef(vkey), self->value_miss, vkey) : NULL;
				Py_XDECREF(vkey);
				if (!v) {
					Py_DECREF(b);
					goto fail;
				}
				Py_XSETREF(rd->last_raw, b);
				Py_XSETREF(rd->last_val, v);
				rd->last_want = want;
			}
			if ((r = put_frag(o, &len, rd->last_val)) <= 0)
				goto bail;
			break;
		}
		case OP_SY: {
			int n, any = 0;
			for (n = 0; n < self->nsyms; n++) {
				int a_i = self->sym_order[n];
				PyObject *akey, *s;
				struct sym *sy = &self->syms[a_i];
				if (sy->has_last && sy->last_a == h.args[a_i]) {
					s = Py_NewRef(sy->last);
				} else {
					akey = arg_obj(self->conv[a_i], h.args[a_i]);
					if (!akey)
						goto fail;
					s = sym_frag(sy, h.args[a_i], akey);
					Py_DECREF(akey);
					if (!s)
						goto fail;
				}
				if (s == Py_None) {
					Py_DECREF(s);
					continue;
				}
				if (put_lit(o, &len, any ? &(struct lit){",", 1} : &self->args_str) < 0) {
					Py_DECREF(s);
					goto fail;
				}
				any = 1;
				r = put_frag(o, &len, s);
				Py_DECREF(s);
				if (r <= 0)
					goto bail;
			}
			if (any && put_lit(o, &len, &(struct lit){"}", 1}) < 0)
				goto fail;
			break;
		}
		case OP_DAY:
			if (!self->last_day || self->last_sec != sec) {
				PyObject *secobj = PyLong_FromLongLong(sec), *c0;
				if (!secobj)
					goto fail;
				c0 = PyList_GET_SIZE(self->clock) == 2 ? PyList_GET_ITEM(self->clock, 0) : NULL;
				r = c0 ? PyObject_RichCompareBool(c0, secobj, Py_EQ) : 0;
				if (r < 0) {
					Py_DECREF(secobj);
					goto fail;
				}
				v = r ? Py_NewRef(PyList_GET_ITEM(self->clock, 1)) : PyObject_CallOneArg(self->when, secobj);
				Py_DECREF(secobj);
				if (!v)
					goto fail;
				Py_XSETREF(self->last_day, v);
				self->last_sec = sec;
			}
			if ((r = put_frag(o, &len, self->last_day)) <= 0)
				goto bail;
			break;
		}
	}
	line = PyUnicode_New((Py_ssize_t)len, 127);
	if (!line)
		return NULL;
	memcpy(PyUnicode_1BYTE_DATA(line), o->buf, len);
	key = PyLong_FromUnsignedLongLong(okey);
	if (!key) {
		Py_DECREF(line);
		return NULL;
	}
	res = PyTuple_New(3);
	if (!res) {
		Py_DECREF(key);
		Py_DECREF(line);
		return NULL;
	}
	PyTuple_SET_ITEM(res, 0, key);
	PyTuple_SET_ITEM(res, 1, Py_NewRef(self->group));
	PyTuple_SET_ITEM(res, 2, line);
	return res;
bail: /* r == 0: a memo gave a value that is not an ASCII str: the line is Python's */
	if (r == 0)
		return delegate(self, rec, cpuobj);
fail:
	return NULL;
}

static PyObject *Line_line(LineObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct out o;
	PyObject *res;
	o.buf = o.stack;
	o.cap = sizeof(o.stack);
	o.heap = 0;
	res = line_into(self, args, nargs, &o);
	if (o.heap)
		PyMem_Free(o.buf);
	return res;
}

/* -- the records of one ring drain ----------------------------------------------------------------------- */

static PyObject *decode_one(PyObject *decode, PyObject *rec, PyObject *cpu)
{
	PyObject *args[2] = {rec, cpu};
	return PyObject_Vectorcall(decode, args, 2, NULL);
}

/* A layout's line function: Line_line itself where it is a Line's (no Python call), else a call. */
static PyObject *call_line(PyObject *fn, PyObject *rec, PyObject *cpu)
{
	PyObject *args[2] = {rec, cpu};
	if (PyCFunction_Check(fn) && PyCFunction_GET_SELF(fn) && Py_IS_TYPE(PyCFunction_GET_SELF(fn), &LineType))
		return Line_line((LineObject *)PyCFunction_GET_SELF(fn), args, 2);
	return PyObject_Vectorcall(fn, args, 2, NULL);
}

/* encode(samples, cpus, layouts, layout_of, decode): recjson.LineEncoder.encode's loop. `layouts` maps a
 * record's layout key (its slot count, syscall number and each slot's argument, as one int) to its line
 * function or None; `layout_of(rec, key)` makes a missing one (and may store it in `layouts`). */
static PyObject *encode(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *samples, *cpus, *layouts, *layout_of, *decode, *out, *it = NULL, *cpu = NULL;
	Py_ssize_t k, n;
	if (nargs != 5) {
		PyErr_SetString(PyExc_TypeError, "encode(samples, cpus, layouts, layout_of, decode)");
		return NULL;
	}
	samples = args[0];
	cpus = args[1];
	layouts = args[2];
	layout_of = args[3];
	decode = args[4];
	if (!PyList_Check(samples) || !PyDict_Check(layouts)) {
		PyErr_SetString(PyExc_TypeError, "encode: samples is a list, layouts a dict");
		return NULL;
	}
	if (PyLong_Check(cpus))
		cpu = Py_NewRef(cpus);
	else if (!(it = PyObject_GetIter(cpus)))
		return NULL;
	n = PyList_GET_SIZE(samples);
	if (!(out = PyList_New(0)))
		goto fail;
	for (k = 0; k < n && k < PyList_GET_SIZE(samples); k++) {
		PyObject *rec = PyList_GET_ITEM(samples, k), *got = NULL, *fn, *key;
		const unsigned char *p;
		Py_ssize_t len;
		unsigned nr_reads, j;
		__u64 lkey;
		Py_INCREF(rec);
		if (it) {
			Py_XSETREF(cpu, PyIter_Next(it));
			if (!cpu) { /* zip(samples, cpus): the shorter ends it */
				Py_DECREF(rec);
				if (PyErr_Occurred())
					goto fail;
				break;
			}
		}
		if (!PyBytes_Check(rec) || PyBytes_GET_SIZE(rec) < 8) {
			if (PyBytes_Check(rec) && PyBytes_GET_SIZE(rec) <= 6) { /* rec[6], as Python would fail */
				PyErr_SetString(PyExc_IndexError, "index out of range");
				Py_DECREF(rec);
				goto fail;
			}
			got = decode_one(decode, rec, cpu);
			goto append;
		}
		p = (const unsigned char *)PyBytes_AS_STRING(rec);
		len = PyBytes_GET_SIZE(rec);
		nr_reads = p[offsetof(struct sys_record, nreads)];
		if (nr_reads > MAX_READS || (size_t)len < HDR_END(nr_reads) ||
		    (p[offsetof(struct sys_record, flags)] & RF_SLEEPABLE)) {
			got = decode_one(decode, rec, cpu);
			goto append;
		}
		lkey = nr_reads | (__u64)(p[offsetof(struct sys_record, nr)] | p[offsetof(struct sys_record, nr) + 1] << 8) << 8;
		for (j = 0; j < nr_reads; j++)
			lkey |= (__u64)p[offsetof(struct sys_record, reads) + j * sizeof(struct read_slot) +
					 offsetof(struct read_slot, arg)] << (24 + 8 * j);
		if (!(key = PyLong_FromUnsignedLongLong(lkey))) {
			Py_DECREF(rec);
			goto fail;
		}
		fn = PyDict_GetItemWithError(layouts, key);
		if (fn) {
			Py_INCREF(fn);
		} else if (!PyErr_Occurred()) {
			PyObject *a[2] = {rec, key};
			fn = PyObject_Vectorcall(layout_of, a, 2, NULL);
		}
		Py_DECREF(key);
		if (!fn) {
			Py_DECREF(rec);
			goto fail;
		}
		got = fn == Py_None ? Py_NewRef(Py_None) : call_line(fn, rec, cpu);
		Py_DECREF(fn);
		if (got == Py_None) {
			Py_DECREF(got);
			got = decode_one(decode, rec, cpu);
		}
append:
		Py_DECREF(rec);
		if (!got)
			goto fail;
		if (PyList_Append(out, got) < 0) {
			Py_DECREF(got);
			goto fail;
		}
		Py_DECREF(got);
	}
	Py_XDECREF(it);
	Py_XDECREF(cpu);
	return out;
fail:
	Py_XDECREF(out);
	Py_XDECREF(it);
	Py_XDECREF(cpu);
	return NULL;
}

/* -- construction from recjson's spec ------------------------------------------------------------------ */

static PyObject *get(PyObject *spec, const char *name)
{
	PyObject *v = PyDict_GetItemString(spec, name);
	if (!v)
		PyErr_Format(PyExc_KeyError, "line spec: no %s", name);
	return v;
}

static int get_lit(PyObject *spec, const char *name, struct lit *out)
{
	PyObject *v = get(spec, name);
	if (!v)
		return -1;
	if (!PyUnicode_Check(v) || !PyUnicode_IS_ASCII(v)) {
		PyErr_Format(PyExc_ValueError, "line spec: %s is not an ASCII str", name);
		return -1;
	}
	out->s = (const char *)PyUnicode_DATA(v);
	out->n = PyUnicode_GET_LENGTH(v);
	return 0;
}

static int name_index(PyObject *name, const char *const *names, int n)
{
	const char *s = PyUnicode_AsUTF8(name);
	int k;
	if (!s)
		return -1;
	for (k = 0; k < n; k++)
		if (!strcmp(s, names[k]))
			return k;
	PyErr_Format(PyExc_ValueError, "line spec: unknown name %R", name);
	return -1;
}

static int check_arg(long i)
{
	if (i < 0 || i >= MAX_ARGS) {
		PyErr_Format(PyExc_ValueError, "line spec: argument index %ld", i);
		return -1;
	}
	return 0;
}

/* Adjacent literals of the template as one (its constant names and fragments lie between its values). */
static int join_literals(LineObject *self)
{
	Py_ssize_t k, at = 0, size = 0;
	char *text, *w;
	for (k = 0; k < self->nitems; k++)
		if (self->items[k].op == OP_LIT)
			size += self->items[k].n;
	if (!(self->lits = w = text = PyMem_Malloc((size_t)size + 1))) {
		PyErr_NoMemory();
		return -1;
	}
	for (k = 0; k < self->nitems; k++) {
		struct item it = self->items[k];
		if (it.op == OP_LIT) {
			memcpy(w, it.s, (size_t)it.n);
			if (at > 0 && self->items[at - 1].op == OP_LIT) {
				self->items[at - 1].n += it.n;
				w += it.n;
				continue;
			}
			it.s = w;
			w += it.n;
		}
		self->items[at++] = it;
	}
	self->nitems = at;
	return 0;
}

static int Line_init(LineObject *self, PyObject *args, PyObject *kwds)
{
	PyObject *spec, *tmpl, *reads, *ints, *v;
	Py_ssize_t k, n;
	unsigned seen = 0; /* the arguments of `ints` so far */
	static char *kwlist[] = {"spec", NULL};
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!", kwlist, &PyDict_Type, &spec))
		return -1;
	if (self->spec) {
		PyErr_SetString(PyExc_RuntimeError, "Line is made once");
		return -1;
	}
	/* self->spec is set last, once all is checked: a Line whose __init__ failed (it may be called again) has
	 * none, and its line() refuses to run on what init left half-made */
	PyMem_Free(self->items);
	PyMem_Free(self->lits);
	self->items = NULL;
	self->lits = NULL;
	self->nitems = 0;
	self->nslots = 0;
	self->nsyms = 0;
	for (k = 0; k < MAX_ARGS; k++) {
		self->reads[k].j = -1;
		self->conv[k] = CONV_NONE;
		self->syms[k].memo = self->syms[k].miss = NULL;
	}
#define OBJ(field, name) \
	if (!(self->field = get(spec, name))) \
		return -1
	OBJ(comms, "COMMS"); OBJ(comm_miss, "comm_frag"); OBJ(rets, "RETS"); OBJ(ret_miss, "ret_frag");
	OBJ(values, "VALUES"); OBJ(value_miss, "value_frag"); OBJ(clock, "CLOCK"); OBJ(when, "when");
	OBJ(group, "GROUP"); OBJ(pyfn, "pyfn");
#undef OBJ
	if (!PyDict_Check(self->comms) || !PyDict_Check(self->rets) || !PyDict_Check(self->values) ||
	    !PyList_Check(self->clock)) {
		PyErr_SetString(PyExc_TypeError, "line spec: memos are dicts, CLOCK a list");
		return -1;
	}
	if (get_lit(spec, "VERIFIED", &self->verified) || get_lit(spec, "UNVERIFIED0", &self->unverified[0]) ||
	    get_lit(spec, "UNVERIFIED1", &self->unverified[1]) || get_lit(spec, "MID0", &self->mid0) ||
	    get_lit(spec, "MID1", &self->mid1) || get_lit(spec, "RC", &self->rc) ||
	    get_lit(spec, "NORET_RF", &self->noret_rf) || get_lit(spec, "SIZE", &self->size) ||
	    get_lit(spec, "ARGS_STR", &self->args_str))
		return -1;
	if (!(v = get(spec, "offset")))
		return -1;
	self->offset = PyLong_AsLongLong(v);
	if (self->offset == -1 && PyErr_Occurred())
		return -1;
	if (!(v = get(spec, "open")))
		return -1;
	if ((self->is_open = PyObject_IsTrue(v)) < 0)
		return -1;
	/* reads: [(argument index, slot index, kind)] */
	if (!(reads = get(spec, "reads")) || !(reads = PySequence_Fast(reads, "reads")))
		return -1;
	n = PySequence_Fast_GET_SIZE(reads);
	for (k = 0; k < n; k++) {
		long i, j, kind;
		if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(reads, k), "lll", &i, &j, &kind) || check_arg(i)) {
			Py_DECREF(reads);
			return -1;
		}
		if (j < 0 || j >= MAX_READS) {
			PyErr_Format(PyExc_ValueError, "line spec: slot %ld", j);
			Py_DECREF(reads);
			return -1;
		}
		self->reads[i].j = (int)j;
		self->reads[i].kind = (int)kind;
		if (j + 1 > self->nslots)
			self->nslots = (int)j + 1;
	}
	Py_DECREF(reads);
	/* ints: [(argument index, conversion name, symbol memo or None, symbol miss function or None)] */
	if (!(ints = get(spec, "ints")) || !(ints = PySequence_Fast(ints, "ints")))
		return -1;
	n = PySequence_Fast_GET_SIZE(ints);
	for (k = 0; k < n; k++) {
		long i;
		PyObject *conv, *memo, *miss;
		if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ints, k), "lUOO", &i, &conv, &memo, &miss) ||
		    check_arg(i) || (self->conv[i] = name_index(conv, CONV_NAMES, 5)) < 0) {
			Py_DECREF(ints);
			return -1;
		}
		if (seen & 1u << i) { /* sym_order holds each argument once (at most MAX_ARGS) */
			PyErr_Format(PyExc_ValueError, "line spec: argument %ld twice in ints", i);
			Py_DECREF(ints);
			return -1;
		}
		seen |= 1u << i;
		if (memo != Py_None) {
			if (!PyDict_Check(memo) || !PyCallable_Check(miss)) {
				PyErr_SetString(PyExc_TypeError, "line spec: a symbol's memo is a dict, its miss callable");
				Py_DECREF(ints);
				return -1;
			}
			self->syms[i].memo = memo;
			self->syms[i].miss = miss;
			self->sym_order[self->nsyms++] = (int)i;
		}
	}
	Py_DECREF(ints);
	/* template: [str (a literal) | (op name, argument index)] */
	if (!(tmpl = get(spec, "template")) || !(tmpl = PySequence_Fast(tmpl, "template")))
		return -1;
	n = PySequence_Fast_GET_SIZE(tmpl);
	self->items = PyMem_Calloc((size_t)n ? (size_t)n : 1, sizeof(struct item));
	if (!self->items) {
		Py_DECREF(tmpl);
		PyErr_NoMemory();
		return -1;
	}
	for (k = 0; k < n; k++) {
		PyObject *x = PySequence_Fast_GET_ITEM(tmpl, k), *name;
		struct item *item = &self->items[k];
		long i;
		if (PyUnicode_Check(x)) {
			if (!PyUnicode_IS_ASCII(x)) {
				PyErr_SetString(PyExc_ValueError, "line spec: a literal is not ASCII");
				goto bad;
			}
			item->op = OP_LIT;
			item->s = (const char *)PyUnicode_DATA(x);
			item->n = PyUnicode_GET_LENGTH(x);
			continue; /* adjacent literals are joined below */
		}
		if (!PyArg_ParseTuple(x, "Ul", &name, &i) || check_arg(i) ||
		    (item->op = name_index(name, OP_NAMES, (int)(sizeof(OP_NAMES) / sizeof(*OP_NAMES)))) < 0)
			goto bad;
		item->i = (int)i;
		if ((item->op == OP_STR || item->op == OP_VAL || item->op == OP_LEN || item->op == OP_SIZE ||
		     item->op == OP_VERIF) && self->reads[i].j < 0) {
			PyErr_Format(PyExc_ValueError, "line spec: argument %ld is not read", i);
			goto bad;
		}
	}
	Py_DECREF(tmpl); /* the literals stay alive in spec's template */
	self->nitems = n;
	if (join_literals(self) < 0)
		return -1;
	if (!PyCallable_Check(self->pyfn) || !PyCallable_Check(self->comm_miss) || !PyCallable_Check(self->ret_miss) ||
	    !PyCallable_Check(self->value_miss) || !PyCallable_Check(self->when)) {
		PyErr_SetString(PyExc_TypeError, "line spec: miss functions are callable");
		return -1;
	}
	self->spec = Py_NewRef(spec);
	return 0;
bad:
	Py_DECREF(tmpl);
	return -1;
}

/* Every reference the Line holds: the spec, and the caches of the last values the memos and miss functions
 * gave (any object a subclass's renderer returns; one that refers back to its encoder makes a cycle). */
static int Line_traverse(LineObject *self, visitproc visit, void *arg)
{
	int k;
	Py_VISIT(self->spec);
	Py_VISIT(self->last_comm);
	Py_VISIT(self->last_ret);
	Py_VISIT(self->last_day);
	for (k = 0; k < MAX_ARGS; k++) {
		Py_VISIT(self->reads[k].last_raw);
		Py_VISIT(self->reads[k].last_val);
		Py_VISIT(self->syms[k].last);
	}
	return 0;
}

static int Line_clear(LineObject *self)
{
	int k;
	Py_CLEAR(self->spec);
	Py_CLEAR(self->last_comm);
	Py_CLEAR(self->last_ret);
	Py_CLEAR(self->last_day);
	for (k = 0; k < MAX_ARGS; k++) {
		Py_CLEAR(self->reads[k].last_raw);
		Py_CLEAR(self->reads[k].last_val);
		Py_CLEAR(self->syms[k].last);
		self->syms[k].has_last = 0;
	}
	return 0;
}

static void Line_dealloc(LineObject *self)
{
	PyObject_GC_UnTrack(self);
	Line_clear(self);
	PyMem_Free(self->items);
	PyMem_Free(self->lits);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Line_methods[] = {
	{"line", (PyCFunction)(void (*)(void))Line_line, METH_FASTCALL,
	 "line(rec, cpu) -> (order key, statistics key, line) | None: the record's JSON line, or None: decode it"},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject LineType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "tracer._recline.Line",
	.tp_basicsize = sizeof(LineObject),
	.tp_dealloc = (destructor)Line_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "Line(spec): the line function of one (syscall, read-slot layout); spec: recjson._c_spec",
	.tp_traverse = (traverseproc)Line_traverse,
	.tp_clear = (inquiry)Line_clear,
	.tp_methods = Line_methods,
	.tp_init = (initproc)Line_init,
	.tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
	{"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
	 "encode(samples, cpus, layouts, layout_of, decode) -> list: recjson.LineEncoder.encode's loop"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "tracer._recline",
	"trace --json's line of a common-shape record, in C (see tracer/_recline.c and tracer/recjson.py)", -1,
	module_methods, NULL, NULL, NULL, NULL,
};

static int add_offset(PyObject *d, const char *name, size_t value)
{
	PyObject *v = PyLong_FromSize_t(value);
	int r = v ? PyDict_SetItemString(d, name, v) : -1;
	Py_XDECREF(v);
	return r;
}

PyMODINIT_FUNC PyInit__recline(void)
{
	PyObject *m, *off;
	if (PyType_Ready(&LineType) < 0)
		return NULL;
	m = PyModule_Create(&module);
	if (!m)
		return NULL;
	off = PyDict_New();
	/* what this build took from record.h: recjson.py compares it with tracer/layout.py's parse */
#define OFF(s, f) add_offset(off, #s "." #f, offsetof(struct s, f))
	if (!off || OFF(sys_record, nr) || OFF(sys_record, nreads) || OFF(sys_record, flags) || OFF(sys_record, pid) ||
	    OFF(sys_record, tid) || OFF(sys_record, uid) || OFF(sys_record, ts_enter) || OFF(sys_record, ts_exit) ||
	    OFF(sys_record, ret) || OFF(sys_record, args) || OFF(sys_record, comm) || OFF(sys_record, reads) ||
	    OFF(sys_record, data) || OFF(read_slot, arg) || OFF(read_slot, kind) || OFF(read_slot, enter_status) ||
	    OFF(read_slot, exit_status) || OFF(read_slot, enter_off) || OFF(read_slot, enter_len) ||
	    OFF(read_slot, exit_same) || OFF(read_slot, want) || add_offset(off, "read_slot", sizeof(struct read_slot)) ||
	    add_offset(off, "sys_record", sizeof(struct sys_record)) || add_offset(off, "MAX_ARGS", MAX_ARGS) ||
	    add_offset(off, "MAX_READS", MAX_READS) || add_offset(off, "TASK_COMM_LEN", TASK_COMM_LEN) ||
	    add_offset(off, "RS_OK", RS_OK) || add_offset(off, "RS_NONE", RS_NONE) || add_offset(off, "RS_TRUNC", RS_TRUNC) ||
	    add_offset(off, "RF_NORETURN", RF_NORETURN) || add_offset(off, "RF_EXIT_READS", RF_EXIT_READS) ||
	    add_offset(off, "RF_SLEEPABLE", RF_SLEEPABLE) ||
	    PyModule_AddObject(m, "OFFSETS", off) < 0) {
#undef OFF
		Py_XDECREF(off);
		Py_DECREF(m);
		return NULL;
	}
	Py_INCREF(&LineType);
	if (PyModule_AddObject(m, "Line", (PyObject *)&LineType) < 0) {
		Py_DECREF(&LineType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
