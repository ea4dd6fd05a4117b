// moat node runtime, native part: the `_moat` module (a MicroPython user C
// module that `moat build` compiles into every firmware).
//
// It does the per-byte work of msgpack.py and serpack.py in C, with the
// same semantics and limits; the Python modules keep their API and call it
// when the firmware has it (`import _moat`). Python classes and sentinels
// that values and errors are made of (Proxy, Ext, Malformed, TooLong, the
// "incomplete" exception, NONE) are handed over once by msgpack.py (init).
//
//   pack(buf, n, x, depth, px)  encode x into buf from n: the new end, or
//                               minus the end it needs when buf is too small
//                               (nothing else changes: grow and call again)
//   msg(buf, o, a, d, i, e, r, n, px)
//                               one protocol message at o, keys a d i e r n
//                               (NONE: absent); result as pack()
//   unpack(buf, p, e, cap, depth)
//                               one value from buf[p:e]: (value, end);
//                               raises the incomplete exception when the data
//                               ends early, TooLong for a length or count
//                               above cap, Malformed otherwise
//   crc16(data)                 SerialPacker's CRC16 (poly 0xBAAD reflected)
//   unframe(s, buf, data, i, j) SerialPacker frames in data[i:j]; s is the
//                               parser's state list (serpack.Frames): the
//                               index after a complete frame (its payload in
//                               buf[:s[1]]), or -1 when all of it was taken
//
// Portable C99 against MicroPython's public headers only (py/obj.h,
// py/runtime.h), so it builds for every port (unix, qemu, rp2, esp32,
// esp8266); compiled with -Wall -Werror (tests/native_module.rs).

#include <string.h>

#include "py/obj.h"
#include "py/runtime.h"
#include "py/smallint.h"

#define DEPTH 16 // maximum nesting of arrays/maps, as msgpack.py

#ifndef MP_NORETURN // named NORETURN before MicroPython 1.26
#define MP_NORETURN NORETURN
#endif

// the Python side's classes: (Proxy, Ext, Malformed, TooLong, incomplete, NONE)
MP_REGISTER_ROOT_POINTER(mp_obj_t moat_native_cls);

enum { C_PROXY, C_EXT, C_MALFORMED, C_TOOLONG, C_INC, C_NONE, C_N };

static mp_obj_t cls(int k) {
    mp_obj_t t = MP_STATE_VM(moat_native_cls);
    if (t == MP_OBJ_NULL) {
        mp_raise_msg(&mp_type_RuntimeError, MP_ERROR_TEXT("_moat: msgpack.py did not call init"));
    }
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(t, &n, &items);
    return items[k];
}

static mp_obj_t moat_init(size_t n_args, const mp_obj_t *args) {
    MP_STATE_VM(moat_native_cls) = mp_obj_new_tuple(n_args, args);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_init_obj, C_N, C_N, moat_init);

static MP_NORETURN void raise_cls(int k, const char *fmt, unsigned v) {
    vstr_t vs;
    vstr_init(&vs, 24);
    vstr_printf(&vs, fmt, v);
    nlr_raise(mp_call_function_1(cls(k), mp_obj_new_str_from_vstr(&vs)));
}

// ---------------------------------------------------------------- encoding

typedef struct {
    byte *b;
    size_t cap; // bytes writable
    size_t n; // end so far; past cap: only counting
    mp_obj_t px; // callable(obj) -> proxy name, or None
} wr_t;

static void put1(wr_t *w, byte c) {
    if (w->n < w->cap) {
        w->b[w->n] = c;
    }
    w->n++;
}

static void put(wr_t *w, const byte *d, size_t k) {
    if (w->n + k <= w->cap) {
        memcpy(w->b + w->n, d, k);
    }
    w->n += k;
}

// code byte, then v big-endian in wid bytes
static void hdr(wr_t *w, byte code, uint64_t v, int wid) {
    byte t[9];
    t[0] = code;
    for (int j = wid; j > 0; j--) {
        t[j] = (byte)v;
        v >>= 8;
    }
    put(w, t, (size_t)wid + 1);
}

static void len_hdr(wr_t *w, size_t k, byte fix, size_t lim, byte c8, byte c16, byte c32) {
    if (k < lim) {
        put1(w, (byte)(fix | k));
    } else if (c8 && k < 0x100) {
        hdr(w, c8, k, 1);
    } else if (k < 0x10000) {
        hdr(w, c16, k, 2);
    } else {
        hdr(w, c32, k, 4);
    }
}

static void pack_uint(wr_t *w, uint64_t x) {
    if (x < 0x80) {
        put1(w, (byte)x);
    } else if (x < 0x100) {
        hdr(w, 0xCC, x, 1);
    } else if (x < 0x10000) {
        hdr(w, 0xCD, x, 2);
    } else if (x < 0x100000000ULL) {
        hdr(w, 0xCE, x, 4);
    } else {
        hdr(w, 0xCF, x, 8);
    }
}

static void pack_sint(wr_t *w, int64_t x) {
    if (x >= 0) {
        pack_uint(w, (uint64_t)x);
    } else if (x >= -32) {
        put1(w, (byte)(x & 0xFF));
    } else if (x >= -0x80) {
        hdr(w, 0xD0, (uint64_t)x & 0xFF, 1);
    } else if (x >= -0x8000) {
        hdr(w, 0xD1, (uint64_t)x & 0xFFFF, 2);
    } else if (x >= -0x80000000LL) {
        hdr(w, 0xD2, (uint64_t)x & 0xFFFFFFFF, 4);
    } else {
        hdr(w, 0xD3, (uint64_t)x, 8);
    }
}

static uint32_t low32(mp_obj_t x) {
    // x & 0xFFFFFFFF (non-negative) as a C integer
    mp_obj_t m = mp_binary_op(MP_BINARY_OP_AND, x, mp_obj_new_int_from_uint(0xFFFFFFFF));
    return (uint32_t)mp_obj_int_get_truncated(m);
}

static void pack_bigint(wr_t *w, mp_obj_t x) {
    // an int beyond the small-int range: checked against 64 bits by value
    bool neg = mp_obj_is_true(mp_binary_op(MP_BINARY_OP_LESS, x, MP_OBJ_NEW_SMALL_INT(0)));
    mp_obj_t top = mp_binary_op(MP_BINARY_OP_RSHIFT, x, MP_OBJ_NEW_SMALL_INT(neg ? 63 : 64));
    if (!mp_obj_equal(top, MP_OBJ_NEW_SMALL_INT(neg ? -1 : 0))) {
        mp_raise_ValueError(neg ? MP_ERROR_TEXT("int too small") : MP_ERROR_TEXT("int too big"));
    }
    uint64_t v = ((uint64_t)low32(mp_binary_op(MP_BINARY_OP_RSHIFT, x, MP_OBJ_NEW_SMALL_INT(32))) << 32)
        | low32(x);
    if (neg) {
        pack_sint(w, (int64_t)v);
    } else {
        pack_uint(w, v);
    }
}

static void pack_float(wr_t *w, mp_obj_t x) {
    #if MICROPY_PY_BUILTINS_FLOAT
    mp_float_t v = mp_obj_get_float(x);
    float f = (float)v;
    if ((mp_float_t)f == v) { // float32 when that is exact
        uint32_t u;
        memcpy(&u, &f, 4);
        hdr(w, 0xCA, u, 4);
    } else {
        double d = (double)v;
        uint64_t u;
        memcpy(&u, &d, 8);
        hdr(w, 0xCB, u, 8);
    }
    #else
    (void)w;
    (void)x;
    #endif
}

static void pack_ext(wr_t *w, int code, const byte *d, size_t k) {
    switch (k) {
        case 1:
            put1(w, 0xD4);
            break;
        case 2:
            put1(w, 0xD5);
            break;
        case 4:
            put1(w, 0xD6);
            break;
        case 8:
            put1(w, 0xD7);
            break;
        case 16:
            put1(w, 0xD8);
            break;
        default:
            if (k < 0x100) {
                hdr(w, 0xC7, k, 1);
            } else if (k < 0x10000) {
                hdr(w, 0xC8, k, 2);
            } else {
                hdr(w, 0xC9, k, 4);
            }
    }
    put1(w, (byte)(code & 0xFF));
    put(w, d, k);
}

static void pack_proxy_name(wr_t *w, mp_obj_t name) {
    size_t k;
    const char *s = mp_obj_str_get_data(name, &k);
    pack_ext(w, 4, (const byte *)s, k);
}

// x's native base type when x is an instance of (a subclass of) t
static bool is(mp_obj_t *x, const mp_obj_type_t *xt, const mp_obj_type_t *t) {
    if (xt == t) {
        return true;
    }
    if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(xt), MP_OBJ_FROM_PTR(t))) {
        *x = mp_obj_cast_to_native_base(*x, MP_OBJ_FROM_PTR(t));
        return *x != MP_OBJ_NULL;
    }
    return false;
}

static void pack(wr_t *w, mp_obj_t x, int depth);

static void pack_items(wr_t *w, const mp_obj_t *items, size_t k, int depth) {
    len_hdr(w, k, 0x90, 16, 0, 0xDC, 0xDD);
    for (size_t j = 0; j < k; j++) {
        pack(w, items[j], depth + 1);
    }
}

static void pack(wr_t *w, mp_obj_t x, int depth) {
    if (depth > DEPTH) {
        mp_raise_ValueError(MP_ERROR_TEXT("too deep"));
    }
    if (x == mp_const_none) {
        put1(w, 0xC0);
        return;
    }
    if (x == mp_const_false) {
        put1(w, 0xC2);
        return;
    }
    if (x == mp_const_true) {
        put1(w, 0xC3);
        return;
    }
    if (mp_obj_is_small_int(x)) {
        pack_sint(w, MP_OBJ_SMALL_INT_VALUE(x));
        return;
    }
    if (mp_obj_is_qstr(x)) {
        size_t k;
        const char *s = mp_obj_str_get_data(x, &k);
        len_hdr(w, k, 0xA0, 32, 0xD9, 0xDA, 0xDB);
        put(w, (const byte *)s, k);
        return;
    }
    const mp_obj_type_t *t = mp_obj_get_type(x);
    if (is(&x, t, &mp_type_int)) {
        pack_bigint(w, x);
    } else if (is(&x, t, &mp_type_str)) {
        size_t k;
        const char *s = mp_obj_str_get_data(x, &k);
        len_hdr(w, k, 0xA0, 32, 0xD9, 0xDA, 0xDB);
        put(w, (const byte *)s, k);
    } else if (is(&x, t, &mp_type_bytes) || is(&x, t, &mp_type_bytearray)
               #if MICROPY_PY_BUILTINS_MEMORYVIEW
               || is(&x, t, &mp_type_memoryview)
               #endif
               ) {
        mp_buffer_info_t bi;
        mp_get_buffer_raise(x, &bi, MP_BUFFER_READ);
        len_hdr(w, bi.len, 0, 0, 0xC4, 0xC5, 0xC6);
        put(w, bi.buf, bi.len);
        #if MICROPY_PY_BUILTINS_FLOAT
    } else if (is(&x, t, &mp_type_float)) {
        pack_float(w, x);
        #endif
    } else if (mp_obj_is_dict_or_ordereddict(x) || is(&x, t, &mp_type_dict)) {
        mp_map_t *m = mp_obj_dict_get_map(x);
        len_hdr(w, m->used, 0x80, 16, 0, 0xDE, 0xDF);
        for (size_t j = 0; j < m->alloc; j++) {
            if (mp_map_slot_is_filled(m, j)) {
                pack(w, m->table[j].key, depth + 1);
                pack(w, m->table[j].value, depth + 1);
            }
        }
    } else if (is(&x, t, &mp_type_list) || is(&x, t, &mp_type_tuple)) {
        size_t k;
        mp_obj_t *items;
        mp_obj_get_array(x, &k, &items);
        pack_items(w, items, k, depth);
    } else if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(t), cls(C_PROXY))) {
        pack_proxy_name(w, mp_load_attr(x, MP_QSTR_name));
    } else if (mp_obj_is_subclass_fast(MP_OBJ_FROM_PTR(t), cls(C_EXT))) {
        mp_buffer_info_t bi;
        mp_get_buffer_raise(mp_load_attr(x, MP_QSTR_data), &bi, MP_BUFFER_READ);
        pack_ext(w, mp_obj_get_int(mp_load_attr(x, MP_QSTR_code)), bi.buf, bi.len);
    } else if (w->px != mp_const_none) {
        pack_proxy_name(w, mp_call_function_1(w->px, x));
    } else {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("cannot encode %s"), mp_obj_get_type_str(x));
    }
}

static wr_t writer(mp_obj_t buf, mp_obj_t n, mp_obj_t px) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(buf, &bi, MP_BUFFER_WRITE);
    wr_t w = { bi.buf, bi.len, (size_t)mp_obj_get_int(n), px };
    return w;
}

static mp_obj_t written(wr_t *w) {
    mp_int_t n = (mp_int_t)w->n;
    return mp_obj_new_int(w->n > w->cap ? -n : n);
}

static mp_obj_t moat_pack(size_t n_args, const mp_obj_t *args) {
    wr_t w = writer(args[0], args[1], args[4]);
    pack(&w, args[2], mp_obj_get_int(args[3]));
    return written(&w);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_pack_obj, 5, 5, moat_pack);

static mp_obj_t moat_msg(size_t n_args, const mp_obj_t *args) {
    // buf, o, a, d, i, e, r, n, px
    static const char keys[6] = { 'a', 'd', 'i', 'e', 'r', 'n' };
    wr_t w = writer(args[0], args[1], args[8]);
    mp_obj_t none = cls(C_NONE);
    size_t o = w.n;
    byte c = 0;
    put1(&w, 0x80);
    for (int j = 0; j < 6; j++) {
        mp_obj_t v = args[2 + j];
        if (v != none) {
            byte kv[2] = { 0xA1, (byte)keys[j] };
            put(&w, kv, 2);
            pack(&w, v, 1);
            c++;
        }
    }
    if (o < w.cap) {
        w.b[o] = 0x80 | c;
    }
    return written(&w);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_msg_obj, 9, 9, moat_msg);

// ---------------------------------------------------------------- decoding

typedef struct {
    const byte *b;
    size_t p, e, cap;
} rd_t;

static MP_NORETURN void incomplete(void) {
    nlr_raise(cls(C_INC));
}

static uint64_t take_u(rd_t *r, size_t wid) {
    if (r->p + wid > r->e) {
        incomplete();
    }
    uint64_t v = 0;
    for (size_t j = 0; j < wid; j++) {
        v = (v << 8) | r->b[r->p + j];
    }
    r->p += wid;
    return v;
}

static const byte *take(rd_t *r, uint64_t k) {
    if (k > r->cap) {
        raise_cls(C_TOOLONG, "length %u", (unsigned)k);
    }
    if (r->p + k > r->e) {
        incomplete();
    }
    const byte *s = r->b + r->p;
    r->p += (size_t)k;
    return s;
}

static size_t count(rd_t *r, uint64_t k) {
    if (k > r->cap) {
        raise_cls(C_TOOLONG, "count %u", (unsigned)k);
    }
    return (size_t)k;
}

// MicroPython's own rule for valid UTF-8 (what str(b, "utf-8") checks)
static bool utf8_ok(const byte *p, size_t len) {
    unsigned need = 0;
    for (const byte *end = p + len; p < end; p++) {
        byte c = *p;
        if (need) {
            if ((c & 0xC0) != 0x80) {
                return false;
            }
            need--;
        } else if (c >= 0xC0) {
            if (c >= 0xF8) {
                return false;
            }
            need = (0xE5 >> ((c >> 3) & 0x6)) & 3;
        } else if (c >= 0x80) {
            return false;
        }
    }
    return need == 0;
}

static mp_obj_t new_str(const byte *s, size_t k, const char *what) {
    if (!utf8_ok(s, k)) {
        raise_cls(C_MALFORMED, what, 0);
    }
    return mp_obj_new_str((const char *)s, k);
}

static mp_obj_t new_int(int64_t v) {
    if (v >= MP_SMALL_INT_MIN && v <= MP_SMALL_INT_MAX) {
        return MP_OBJ_NEW_SMALL_INT((mp_int_t)v);
    }
    return mp_obj_new_int_from_ll(v);
}

static mp_obj_t new_uint(uint64_t v) {
    if (v <= (uint64_t)MP_SMALL_INT_MAX) {
        return MP_OBJ_NEW_SMALL_INT((mp_int_t)v);
    }
    return mp_obj_new_int_from_ull(v);
}

static mp_obj_t val(rd_t *r, int depth);

static mp_obj_t dec_str(rd_t *r, size_t k) {
    if (k == 1 && r->p < r->e) {
        // protocol keys: shared, no allocation
        qstr q = MP_QSTRnull;
        switch (r->b[r->p]) {
            case 'a': q = MP_QSTR_a; break;
            case 'd': q = MP_QSTR_d; break;
            case 'i': q = MP_QSTR_i; break;
            case 'e': q = MP_QSTR_e; break;
            case 'r': q = MP_QSTR_r; break;
            case 'n': q = MP_QSTR_n; break;
            case 'x': q = MP_QSTR_x; break;
            case 's': q = MP_QSTR_s; break;
            case 'm': q = MP_QSTR_m; break;
            case 'p': q = MP_QSTR_p; break;
            case 'f': q = MP_QSTR_f; break;
            case 'o': q = MP_QSTR_o; break;
            case 'c': q = MP_QSTR_c; break;
            case 't': q = MP_QSTR_t; break;
        }
        if (q != MP_QSTRnull) {
            r->p++;
            return MP_OBJ_NEW_QSTR(q);
        }
    }
    const byte *s = take(r, k);
    return new_str(s, k, "utf-8");
}

static mp_obj_t dec_ext(rd_t *r, uint64_t k) {
    if (r->p >= r->e) {
        incomplete();
    }
    int code = r->b[r->p++];
    const byte *s = take(r, k);
    if (code == 4) {
        return mp_call_function_1(cls(C_PROXY), new_str(s, (size_t)k, "proxy name"));
    }
    if (code > 127) {
        code -= 256;
    }
    return mp_call_function_2(cls(C_EXT), MP_OBJ_NEW_SMALL_INT(code), mp_obj_new_bytes(s, (size_t)k));
}

static mp_obj_t dec_arr(rd_t *r, uint64_t k, int depth) {
    if (depth >= DEPTH) {
        raise_cls(C_MALFORMED, "too deep", 0);
    }
    if (k > 8) {
        count(r, k);
    }
    mp_obj_t l = mp_obj_new_list((size_t)k, NULL);
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(l, &n, &items);
    for (size_t j = 0; j < n; j++) {
        items[j] = mp_const_none;
    }
    for (size_t j = 0; j < n; j++) {
        mp_obj_t v = val(r, depth + 1);
        mp_obj_get_array(l, &n, &items); // a collection never moves it; be exact anyway
        items[j] = v;
    }
    return l;
}

static mp_obj_t dec_map(rd_t *r, uint64_t k, int depth) {
    if (depth >= DEPTH) {
        raise_cls(C_MALFORMED, "too deep", 0);
    }
    size_t n = count(r, k);
    // sized for small maps only: a hostile count must not allocate (as msgpack.py)
    mp_obj_t d = mp_obj_new_dict(n < 8 ? n : 8);
    for (size_t j = 0; j < n; j++) {
        mp_obj_t key = val(r, depth + 1);
        if (mp_obj_is_type(key, &mp_type_list) || mp_obj_is_type(key, &mp_type_dict)) {
            raise_cls(C_MALFORMED, "unhashable key", 0);
        }
        mp_obj_dict_store(d, key, val(r, depth + 1));
    }
    return d;
}

#if MICROPY_PY_BUILTINS_FLOAT
static mp_obj_t dec_float(rd_t *r, int wid) {
    const byte *s = take(r, (uint64_t)wid);
    uint64_t u = 0;
    for (int j = 0; j < wid; j++) {
        u = (u << 8) | s[j];
    }
    if (wid == 4) {
        uint32_t u32 = (uint32_t)u;
        float f;
        memcpy(&f, &u32, 4);
        return mp_obj_new_float((mp_float_t)f);
    }
    double d;
    memcpy(&d, &u, 8);
    return mp_obj_new_float((mp_float_t)d);
}
#endif

static mp_obj_t val(rd_t *r, int depth) {
    if (r->p >= r->e) {
        incomplete();
    }
    byte c = r->b[r->p++];
    if (c < 0x80) {
        return MP_OBJ_NEW_SMALL_INT(c);
    }
    if (c >= 0xE0) {
        return MP_OBJ_NEW_SMALL_INT((mp_int_t)c - 0x100);
    }
    if (c < 0x90) {
        return dec_map(r, c & 0x0F, depth);
    }
    if (c < 0xA0) {
        return dec_arr(r, c & 0x0F, depth);
    }
    if (c < 0xC0) {
        return dec_str(r, c & 0x1F);
    }
    switch (c) {
        case 0xC0:
            return mp_const_none;
        case 0xC1:
            raise_cls(C_MALFORMED, "byte 0xc1", 0);
        case 0xC2:
            return mp_const_false;
        case 0xC3:
            return mp_const_true;
        case 0xC4:
        case 0xC5:
        case 0xC6: { // bin 8/16/32
            uint64_t k = take_u(r, (size_t)1 << (c - 0xC4));
            const byte *s = take(r, k);
            return mp_obj_new_bytes(s, (size_t)k);
        }
        case 0xC7:
        case 0xC8:
        case 0xC9: // ext 8/16/32
            return dec_ext(r, take_u(r, (size_t)1 << (c - 0xC7)));
        #if MICROPY_PY_BUILTINS_FLOAT
        case 0xCA:
            return dec_float(r, 4);
        case 0xCB:
            return dec_float(r, 8);
        #endif
        case 0xCC:
        case 0xCD:
        case 0xCE:
        case 0xCF: // uint 8..64
            return new_uint(take_u(r, (size_t)1 << (c - 0xCC)));
        case 0xD0:
        case 0xD1:
        case 0xD2:
        case 0xD3: { // int 8..64
            size_t wid = (size_t)1 << (c - 0xD0);
            uint64_t v = take_u(r, wid);
            if (wid < 8 && v >> (wid * 8 - 1)) {
                v |= ~(uint64_t)0 << (wid * 8); // sign-extend
            }
            return new_int((int64_t)v);
        }
        case 0xD4:
        case 0xD5:
        case 0xD6:
        case 0xD7:
        case 0xD8: // fixext 1..16
            return dec_ext(r, (uint64_t)1 << (c - 0xD4));
        case 0xD9:
        case 0xDA:
        case 0xDB: // str 8/16/32
            return dec_str(r, (size_t)take_u(r, (size_t)1 << (c - 0xD9)));
        case 0xDC:
        case 0xDD: // array 16/32
            return dec_arr(r, take_u(r, c == 0xDC ? 2 : 4), depth);
        case 0xDE:
        case 0xDF: // map 16/32
            return dec_map(r, take_u(r, c == 0xDE ? 2 : 4), depth);
    }
    raise_cls(C_MALFORMED, "byte 0x%02x", c);
}

static mp_obj_t moat_unpack(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[0], &bi, MP_BUFFER_READ);
    mp_int_t p = mp_obj_get_int(args[1]);
    mp_int_t e = mp_obj_get_int(args[2]);
    mp_int_t cap = mp_obj_get_int(args[3]);
    if (p < 0 || e < p || (size_t)e > bi.len || cap < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("unpack: bad bounds"));
    }
    rd_t r = { bi.buf, (size_t)p, (size_t)e, (size_t)cap };
    mp_obj_t v = val(&r, mp_obj_get_int(args[4]));
    mp_obj_t t[2] = { v, MP_OBJ_NEW_SMALL_INT(r.p) };
    return mp_obj_new_tuple(2, t);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_unpack_obj, 5, 5, moat_unpack);

// ---------------------------------------------------------------- framing

static const uint16_t crc_t[16] = {
    // nibble table of the reflected polynomial 0xBAAD (serpack._table)
    0x0000, 0x64A8, 0xC950, 0xADF8, 0xE7FB, 0x8353, 0x2EAB, 0x4A03,
    0xBAAD, 0xDE05, 0x73FD, 0x1755, 0x5D56, 0x39FE, 0x9406, 0xF0AE,
};

static inline uint16_t crc_byte(uint16_t c, byte b) {
    c = (c >> 4) ^ crc_t[(c ^ (b >> 4)) & 0xF];
    return (c >> 4) ^ crc_t[(c ^ b) & 0xF];
}

static mp_obj_t moat_crc16(mp_obj_t data) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(data, &bi, MP_BUFFER_READ);
    uint16_t c = 0;
    const byte *p = bi.buf;
    for (size_t j = 0; j < bi.len; j++) {
        c = crc_byte(c, p[j]);
    }
    return MP_OBJ_NEW_SMALL_INT(c);
}
static MP_DEFINE_CONST_FUN_OBJ_1(moat_crc16_obj, moat_crc16);

// --- HMAC-SHA256 for sealed messages (docs/auth.md). hashlib's sha256
// objects cannot be copied, so the Python path hashes both padded key
// blocks again for every message (5 compressions, 4 objects); here the two
// midstates are made once per key and a message costs 3 compressions and
// one bytes object. FIPS 180-4, checked by the auth vectors
// (node-runtime/tests/test_auth.py).

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t sha_iv[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t get32(const byte *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(byte *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void sha_block(uint32_t *h, const byte *p) {
    uint32_t w[64];
    for (int j = 0; j < 16; j++) {
        w[j] = get32(p + 4 * j);
    }
    for (int j = 16; j < 64; j++) {
        uint32_t s0 = ROR(w[j - 15], 7) ^ ROR(w[j - 15], 18) ^ (w[j - 15] >> 3);
        uint32_t s1 = ROR(w[j - 2], 17) ^ ROR(w[j - 2], 19) ^ (w[j - 2] >> 10);
        w[j] = w[j - 16] + s0 + w[j - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int j = 0; j < 64; j++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[j] + w[j];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

// a hash under way: its state, the bytes hashed, the partial block
typedef struct {
    uint32_t h[8];
    uint32_t len;
    byte buf[64];
} sha_t;

static void sha_from(sha_t *s, const byte *mid) {
    // continue from a midstate (32 bytes, big-endian) after one block
    for (int j = 0; j < 8; j++) {
        s->h[j] = get32(mid + 4 * j);
    }
    s->len = 64;
}

static void sha_update(sha_t *s, const byte *p, size_t n) {
    while (n > 0) {
        size_t used = s->len % 64;
        size_t take = 64 - used;
        if (take > n) {
            take = n;
        }
        memcpy(s->buf + used, p, take);
        s->len += take;
        p += take;
        n -= take;
        if (s->len % 64 == 0) {
            sha_block(s->h, s->buf);
        }
    }
}

static void sha_final(sha_t *s, byte *out) {
    uint32_t bits_hi = s->len >> 29, bits_lo = s->len << 3;
    size_t used = s->len % 64;
    s->buf[used++] = 0x80;
    if (used > 56) {
        memset(s->buf + used, 0, 64 - used);
        sha_block(s->h, s->buf);
        used = 0;
    }
    memset(s->buf + used, 0, 56 - used);
    put32(s->buf + 56, bits_hi);
    put32(s->buf + 60, bits_lo);
    sha_block(s->h, s->buf);
    for (int j = 0; j < 8; j++) {
        put32(out + 4 * j, s->h[j]);
    }
}

// hmac_key(st, ipad, opad): st (64 bytes) = the midstates after the padded
// key blocks ipad and opad (64 bytes each)
static mp_obj_t moat_hmac_key(mp_obj_t st_in, mp_obj_t i_in, mp_obj_t o_in) {
    mp_buffer_info_t st, i, o;
    mp_get_buffer_raise(st_in, &st, MP_BUFFER_WRITE);
    mp_get_buffer_raise(i_in, &i, MP_BUFFER_READ);
    mp_get_buffer_raise(o_in, &o, MP_BUFFER_READ);
    if (st.len < 64 || i.len != 64 || o.len != 64) {
        mp_raise_ValueError(MP_ERROR_TEXT("hmac_key sizes"));
    }
    const mp_buffer_info_t *pads[2] = {&i, &o};
    for (int p = 0; p < 2; p++) {
        uint32_t h[8];
        memcpy(h, sha_iv, sizeof(h));
        sha_block(h, pads[p]->buf);
        for (int j = 0; j < 8; j++) {
            put32((byte *)st.buf + 32 * p + 4 * j, h[j]);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_3(moat_hmac_key_obj, moat_hmac_key);

// hmac2(st, a, b) -> HMAC(key, a | b), 32 bytes; st from hmac_key
static mp_obj_t moat_hmac2(mp_obj_t st_in, mp_obj_t a_in, mp_obj_t b_in) {
    mp_buffer_info_t st, a, b;
    mp_get_buffer_raise(st_in, &st, MP_BUFFER_READ);
    mp_get_buffer_raise(a_in, &a, MP_BUFFER_READ);
    mp_get_buffer_raise(b_in, &b, MP_BUFFER_READ);
    if (st.len < 64) {
        mp_raise_ValueError(MP_ERROR_TEXT("hmac2 state"));
    }
    sha_t s;
    byte t[32];
    sha_from(&s, st.buf);
    sha_update(&s, a.buf, a.len);
    sha_update(&s, b.buf, b.len);
    sha_final(&s, t);
    sha_from(&s, (const byte *)st.buf + 32);
    sha_update(&s, t, 32);
    sha_final(&s, t);
    return mp_obj_new_bytes(t, 32);
}
static MP_DEFINE_CONST_FUN_OBJ_3(moat_hmac2_obj, moat_hmac2);

// stream(st, dc, buf, off, n): buf[off:n] ^= the keystream of the message
// D | C (dc, 5 bytes) under the key of st (from hmac_key): block j is
// HMAC(KE, D | C | J), J 4 bytes big-endian (docs/auth.md §Encryption)
static mp_obj_t moat_stream(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t st, dc, b;
    mp_get_buffer_raise(args[0], &st, MP_BUFFER_READ);
    mp_get_buffer_raise(args[1], &dc, MP_BUFFER_READ);
    mp_get_buffer_raise(args[2], &b, MP_BUFFER_WRITE);
    mp_int_t off = mp_obj_get_int(args[3]);
    mp_int_t end = mp_obj_get_int(args[4]);
    if (st.len < 64 || dc.len != 5 || off < 0 || end < off || (size_t)end > b.len) {
        mp_raise_ValueError(MP_ERROR_TEXT("stream arguments"));
    }
    byte *d = (byte *)b.buf;
    byte msg[9];
    memcpy(msg, dc.buf, 5);
    for (uint32_t j = 0; off < end; j++) {
        sha_t s;
        byte k[32];
        put32(msg + 5, j);
        sha_from(&s, st.buf);
        sha_update(&s, msg, 9);
        sha_final(&s, k);
        sha_from(&s, (const byte *)st.buf + 32);
        sha_update(&s, k, 32);
        sha_final(&s, k);
        for (int i = 0; i < 32 && off < end; i++, off++) {
            d[off] ^= k[i];
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_stream_obj, 5, 5, moat_stream);

// serpack.Frames' state list
enum { S_ST, S_K, S_N, S_C, S_H, S_BAD, S_LONG, S_M, S_ONE, S_START, S_LEN };

static mp_obj_t moat_unframe(size_t n_args, const mp_obj_t *args) {
    size_t ns;
    mp_obj_t *s;
    mp_obj_get_array(args[0], &ns, &s);
    if (ns != S_LEN) {
        mp_raise_ValueError(MP_ERROR_TEXT("unframe: state"));
    }
    mp_buffer_info_t out, in;
    mp_get_buffer_raise(args[1], &out, MP_BUFFER_WRITE);
    mp_get_buffer_raise(args[2], &in, MP_BUFFER_READ);
    mp_int_t i = mp_obj_get_int(args[3]);
    mp_int_t j = mp_obj_get_int(args[4]);
    if (i < 0 || j < i || (size_t)j > in.len) {
        mp_raise_ValueError(MP_ERROR_TEXT("unframe: bad bounds"));
    }
    mp_int_t st = MP_OBJ_SMALL_INT_VALUE(s[S_ST]);
    size_t k = MP_OBJ_SMALL_INT_VALUE(s[S_K]);
    size_t n = MP_OBJ_SMALL_INT_VALUE(s[S_N]);
    uint16_t c = MP_OBJ_SMALL_INT_VALUE(s[S_C]);
    mp_int_t h = MP_OBJ_SMALL_INT_VALUE(s[S_H]);
    mp_int_t bad = MP_OBJ_SMALL_INT_VALUE(s[S_BAD]);
    mp_int_t lng = MP_OBJ_SMALL_INT_VALUE(s[S_LONG]);
    size_t m = MP_OBJ_SMALL_INT_VALUE(s[S_M]);
    bool one = mp_obj_is_true(s[S_ONE]);
    byte start = MP_OBJ_SMALL_INT_VALUE(s[S_START]);
    if (m > out.len) {
        m = out.len;
    }
    byte *buf = out.buf;
    const byte *p = in.buf;
    mp_int_t done = -1;
    while (i < j) {
        byte b = p[i++];
        if (st == 0) {
            if (b == start) {
                st = 1;
            }
        } else if (st == 1 || st == 2) {
            size_t len;
            if (st == 1 && !one && b >= 0x80) {
                k = b & 0x7F;
                st = 2;
                continue;
            }
            len = st == 1 ? b : (k | ((size_t)b << 7));
            if (len == 0 || len > m) {
                lng++;
                st = 0;
            } else {
                k = len;
                n = 0;
                c = 0;
                st = 3;
            }
        } else if (st == 3) {
            buf[n++] = b;
            c = crc_byte(c, b);
            if (n == k) {
                st = 4;
            }
        } else if (st == 4) {
            h = b;
            st = 5;
        } else {
            st = 0;
            if (((h << 8) | b) == c) {
                done = i;
                break;
            }
            bad++;
        }
    }
    s[S_ST] = MP_OBJ_NEW_SMALL_INT(st);
    s[S_K] = MP_OBJ_NEW_SMALL_INT(k);
    s[S_N] = MP_OBJ_NEW_SMALL_INT(n);
    s[S_C] = MP_OBJ_NEW_SMALL_INT(c);
    s[S_H] = MP_OBJ_NEW_SMALL_INT(h);
    s[S_BAD] = MP_OBJ_NEW_SMALL_INT(bad);
    s[S_LONG] = MP_OBJ_NEW_SMALL_INT(lng);
    return MP_OBJ_NEW_SMALL_INT(done);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(moat_unframe_obj, 5, 5, moat_unframe);

// ---------------------------------------------------------------- module

static const mp_rom_map_elem_t moat_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__moat) },
    { MP_ROM_QSTR(MP_QSTR_init), MP_ROM_PTR(&moat_init_obj) },
    { MP_ROM_QSTR(MP_QSTR_pack), MP_ROM_PTR(&moat_pack_obj) },
    { MP_ROM_QSTR(MP_QSTR_msg), MP_ROM_PTR(&moat_msg_obj) },
    { MP_ROM_QSTR(MP_QSTR_unpack), MP_ROM_PTR(&moat_unpack_obj) },
    { MP_ROM_QSTR(MP_QSTR_crc16), MP_ROM_PTR(&moat_crc16_obj) },
    { MP_ROM_QSTR(MP_QSTR_hmac_key), MP_ROM_PTR(&moat_hmac_key_obj) },
    { MP_ROM_QSTR(MP_QSTR_hmac2), MP_ROM_PTR(&moat_hmac2_obj) },
    { MP_ROM_QSTR(MP_QSTR_stream), MP_ROM_PTR(&moat_stream_obj) },
    { MP_ROM_QSTR(MP_QSTR_unframe), MP_ROM_PTR(&moat_unframe_obj) },
};
static MP_DEFINE_CONST_DICT(moat_globals, moat_globals_table);

const mp_obj_module_t moat_native_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&moat_globals,
};

MP_REGISTER_MODULE(MP_QSTR__moat, moat_native_module);
