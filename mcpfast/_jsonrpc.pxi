# JSON-RPC envelope scanner and splice helpers (compiled; twin: _jsonrpc_py.py).
#
# Theory of operation.  A JSON-RPC body flows in through the buffer protocol and is read
# as `const unsigned char*`; one Envelope per message flows out: kind, method, id and the
# few params/_meta/error members a gateway routes on, as decoded values plus byte spans
# into the body.  The walk is a single left-to-right pass that validates every byte as
# JSON (RFC 8259) while building no Python object: it only records, in a JrFound
# struct, where the interesting values are.  Most of a tools/call body is the inside of
# long strings, so strings are skipped eight bytes at a time (SWAR: one 64-bit word is
# checked at once for '"', '\\', control bytes and bytes >= 0x80); only escapes and
# non-ASCII UTF-8 sequences leave that loop.  Containers we do not look into are skipped
# by an iterative state machine (JrSkip) with a byte stack of open brackets.  Once the
# whole text has proved to be JSON, each JrFound is judged against JSON-RPC 2.0 and only
# then are the handful of reported strings and integers decoded -- so broken JSON always
# gives -32700, never a -32600 that depends on where the damage was.  A value the gateway
# must rewrite is replaced with splice(): one allocation, three memcpys.

cimport cython
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport isinf
from libc.string cimport memcmp, memset
from libc.stdint cimport uint64_t

cdef extern from "Python.h":
    double PyOS_string_to_double(const char* s, char** endptr, PyObject* overflow_exception) except? -1.0
    void PyErr_Clear()

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* One unaligned 64-bit load (compilers turn the memcpy into a single mov). */
    static inline uint64_t mcpfast_jr_load64(const unsigned char *p) {
        uint64_t w; memcpy(&w, p, 8); return w;
    }
    /* Index, in memory order, of the first byte of a SWAR mask m != 0 whose bit 7 is set. */
    static inline int mcpfast_jr_first_flag(uint64_t m) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_ctzll(m) >> 3;
    #elif defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        return __builtin_clzll(m) >> 3;
    #else
        unsigned char b[8]; int k; memcpy(b, &m, 8);
        for (k = 0; k < 8; k++) if (b[k]) return k;
        return 8;
    #endif
    }
    /* Length of the leading run of p[0:len) free of quote, backslash, bytes < 0x20 and bytes
       >= 0x80, examined in whole 16-byte blocks: it stops at the first such byte, or where
       fewer than 16 bytes remain (the caller's SWAR loop finishes).  SSE2 is part of
       x86-64, so no runtime dispatch; elsewhere it returns 0 and SWAR does all the work.
       The signed compare "< 0x20" catches both controls and bytes >= 0x80 (negative). */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    static inline Py_ssize_t mcpfast_jr_block_run(const unsigned char *p, Py_ssize_t len) {
        const __m128i quote = _mm_set1_epi8(0x22), bsl = _mm_set1_epi8(0x5C), low = _mm_set1_epi8(0x20);
        Py_ssize_t j = 0;
        __m128i a, b;
        unsigned int m;
        while (j + 32 <= len) {
            a = _mm_loadu_si128((const __m128i *)(p + j));
            b = _mm_loadu_si128((const __m128i *)(p + j + 16));
            a = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(a, bsl)), _mm_cmplt_epi8(a, low));
            b = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(b, quote), _mm_cmpeq_epi8(b, bsl)), _mm_cmplt_epi8(b, low));
            m = (unsigned int)_mm_movemask_epi8(a) | ((unsigned int)_mm_movemask_epi8(b) << 16);
            if (m) return j + __builtin_ctz(m);
            j += 32;
        }
        if (j + 16 <= len) {
            a = _mm_loadu_si128((const __m128i *)(p + j));
            a = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(a, bsl)), _mm_cmplt_epi8(a, low));
            m = (unsigned int)_mm_movemask_epi8(a);
            if (m) return j + __builtin_ctz(m);
            j += 16;
        }
        return j;
    }
    #else
    static inline Py_ssize_t mcpfast_jr_block_run(const unsigned char *p, Py_ssize_t len) { (void)p; (void)len; return 0; }
    #endif
    #define MCPFAST_JR_LOW7  0x7F7F7F7F7F7F7F7FULL
    #define MCPFAST_JR_HIGH  0x8080808080808080ULL
    #define MCPFAST_JR_LT20  0x6060606060606060ULL  /* + this sets bit 7 iff a 7-bit byte >= 0x20 */
    #define MCPFAST_JR_QUOTE 0x2222222222222222ULL
    #define MCPFAST_JR_BSL   0x5C5C5C5C5C5C5C5CULL
    """
    uint64_t mcpfast_jr_load64(const unsigned char* p) nogil
    int mcpfast_jr_first_flag(uint64_t m) nogil
    Py_ssize_t mcpfast_jr_block_run(const unsigned char* p, Py_ssize_t length) nogil
    uint64_t MCPFAST_JR_LOW7
    uint64_t MCPFAST_JR_HIGH
    uint64_t MCPFAST_JR_LT20
    uint64_t MCPFAST_JR_QUOTE
    uint64_t MCPFAST_JR_BSL

import operator

KIND_REQUEST = 1
KIND_NOTIFICATION = 2
KIND_RESPONSE = 3
KIND_ERROR = 4

# Byte classes, filled once at import.  _JR_STRING_STOP: bytes that end a plain run inside
# a string (RFC 8259 §7: '"', '\\', raw controls < 0x20; plus >= 0x80 for UTF-8 checks).
cdef unsigned char _JR_STRING_STOP[256]
cdef signed char _JR_HEX[256]  # value of a hex digit, -1 for any other byte


cdef void _jr_init_tables() noexcept:
    cdef int c
    for c in range(256):
        _JR_STRING_STOP[c] = c < 0x20 or c >= 0x80 or c == 0x22 or c == 0x5C
        if 0x30 <= c <= 0x39:
            _JR_HEX[c] = c - 0x30
        elif 0x61 <= c <= 0x66:
            _JR_HEX[c] = c - 0x61 + 10
        elif 0x41 <= c <= 0x46:
            _JR_HEX[c] = c - 0x41 + 10
        else:
            _JR_HEX[c] = -1


_jr_init_tables()


# ---------------------------------------------------------------------------------------
# Lexical level: whitespace, strings, numbers, literals (RFC 8259 §2, §6, §7)
# ---------------------------------------------------------------------------------------

cdef inline Py_ssize_t _jr_fail(JrScan* s, Py_ssize_t pos, const char* why) noexcept:
    if s.err == NULL:
        s.err = why
        s.err_pos = pos
    return -1


cdef inline Py_ssize_t _jr_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # RFC 8259 §2: ws = *( %x20 / %x09 / %x0A / %x0D ) -- nothing else (no BOM, no \f).
    cdef unsigned char c
    while i < n:
        c = p[i]
        if c > 0x20 or (c != 0x20 and c != 0x0A and c != 0x0D and c != 0x09):
            break
        i += 1
    return i


cdef inline uint64_t _jr_special8(uint64_t w) noexcept nogil:
    # Per byte, exactly (no carries cross bytes): the low 7 bits are compared by adding a
    # constant that overflows into bit 7, and bytes >= 0x80 are flagged by their own bit 7.
    cdef uint64_t low7 = w & MCPFAST_JR_LOW7
    cdef uint64_t control = ~(low7 + MCPFAST_JR_LT20)
    cdef uint64_t quote = ~((low7 ^ MCPFAST_JR_QUOTE) + MCPFAST_JR_LOW7)
    cdef uint64_t backslash = ~((low7 ^ MCPFAST_JR_BSL) + MCPFAST_JR_LOW7)
    return (w | control | quote | backslash) & MCPFAST_JR_HIGH


cdef inline int _jr_utf8(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # RFC 3629 §4 (UTF8-2/3/4): no overlongs (C0, C1, E0 80-9F, F0 80-8F), no surrogates
    # (ED A0-BF), nothing above U+10FFFF (F4 90-BF, F5-FF).
    cdef unsigned char c = p[i]
    cdef unsigned char lo = 0x80, hi = 0xBF
    if c < 0xC2:
        return 0
    if c < 0xE0:
        return 2 if i + 1 < n and (p[i + 1] & 0xC0) == 0x80 else 0
    if c < 0xF0:
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        if i + 2 < n and lo <= p[i + 1] <= hi and (p[i + 2] & 0xC0) == 0x80:
            return 3
        return 0
    if c < 0xF5:
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if (i + 3 < n and lo <= p[i + 1] <= hi and (p[i + 2] & 0xC0) == 0x80
                and (p[i + 3] & 0xC0) == 0x80):
            return 4
    return 0


cdef inline long _jr_hex4(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef long a, b, c, d
    if i + 4 > n:
        return -1
    a = _JR_HEX[p[i]]
    b = _JR_HEX[p[i + 1]]
    c = _JR_HEX[p[i + 2]]
    d = _JR_HEX[p[i + 3]]
    if (a | b | c | d) < 0:
        return -1
    return (a << 12) | (b << 8) | (c << 4) | d


cdef inline Py_ssize_t _jr_escape(JrScan* s, Py_ssize_t i) noexcept:
    # RFC 8259 §7: \" \\ \/ \b \f \n \r \t \uXXXX.
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef unsigned char c
    cdef long unit, low
    if i + 1 >= n:
        return _jr_fail(s, i, "bad escape")
    c = p[i + 1]
    if c == c'"' or c == c'\\' or c == c'/' or c == c'b' or c == c'f' or c == c'n' or c == c'r' or c == c't':
        return i + 2
    if c != c'u':
        return _jr_fail(s, i, "bad escape")
    unit = _jr_hex4(p, i + 2, n)
    if unit < 0:
        return _jr_fail(s, i + 2, "bad \\u escape")
    # RFC 8259 §7 admits a lone surrogate escape ("\ud800") syntactically, but it names no
    # character.  orjson 3.x refuses it ("no low surrogate in string" / "invalid high
    # surrogate"): a high surrogate must be followed at once by an escaped low one and a
    # low one never stands alone.  We match orjson so that what we pass, it parses.
    if 0xD800 <= unit <= 0xDBFF:
        if i + 7 < n and p[i + 6] == c'\\' and p[i + 7] == c'u':
            low = _jr_hex4(p, i + 8, n)
            if 0xDC00 <= low <= 0xDFFF:
                return i + 12
            if low < 0:
                return _jr_fail(s, i + 8, "bad \\u escape")
        return _jr_fail(s, i, "lone surrogate escape")
    if 0xDC00 <= unit <= 0xDFFF:
        return _jr_fail(s, i, "lone surrogate escape")
    return i + 6


cdef inline Py_ssize_t _jr_string(JrScan* s, Py_ssize_t i) noexcept:
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef Py_ssize_t j = i + 1
    cdef uint64_t mask
    cdef unsigned char c
    cdef int k
    s.escaped = 0
    while True:
        # Fast path: plain ASCII runs, 32 bytes per step with SSE2, then one 64-bit word
        # per step (SWAR), then byte by byte for the last few.
        j += mcpfast_jr_block_run(p + j, n - j)
        while j + 8 <= n:
            mask = _jr_special8(mcpfast_jr_load64(p + j))
            if mask != 0:
                j += mcpfast_jr_first_flag(mask)
                break
            j += 8
        else:
            while j < n and not _JR_STRING_STOP[p[j]]:
                j += 1
        if j >= n:
            return _jr_fail(s, n, "unterminated string")
        c = p[j]
        if c == c'"':
            return j + 1
        if c == c'\\':
            j = _jr_escape(s, j)
            if j < 0:
                return -1
            s.escaped = 1
        elif c < 0x20:
            return _jr_fail(s, j, "raw control character in string")  # RFC 8259 §7
        else:
            k = _jr_utf8(p, j, n)  # RFC 8259 §8.1: UTF-8
            if k == 0:
                return _jr_fail(s, j, "invalid UTF-8")
            j += k


cdef int _jr_number_overflows(const unsigned char* p, Py_ssize_t start, Py_ssize_t end) noexcept:
    # The same correctly rounded conversion as Python's float(), on a NUL-terminated copy.
    cdef char* text = <char*>PyMem_Malloc(end - start + 1)
    cdef double value
    if text == NULL:
        PyErr_Clear()
        return 1
    memcpy(text, p + start, end - start)
    text[end - start] = 0
    try:
        value = PyOS_string_to_double(text, NULL, NULL)
    except BaseException:
        PyErr_Clear()
        value = 1e308 * 10.0  # cannot happen for validated text; refuse rather than guess
    finally:
        PyMem_Free(text)
    return isinf(value)


cdef inline Py_ssize_t _jr_number(JrScan* s, Py_ssize_t i) noexcept:
    # RFC 8259 §6: number = [ minus ] int [ frac ] [ exp ]; int = zero / ( digit1-9 *DIGIT ).
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef Py_ssize_t j = i, digits, int_digits = 0, frac_zeros = 0, frac_start
    cdef long long exponent = 0, magnitude
    cdef bint negative_exp = False, frac_nonzero = False
    s.is_int = 1
    if p[j] == c'-':
        j += 1
    if j >= n:
        return _jr_fail(s, i, "bad number")
    if p[j] == c'0':
        j += 1
    elif c'1' <= p[j] <= c'9':
        digits = j
        while j < n and <unsigned char>(p[j] - c'0') < 10:
            j += 1
        int_digits = j - digits
    else:
        return _jr_fail(s, i, "bad number")
    if j < n and p[j] == c'.':
        j += 1
        frac_start = j
        while j < n and <unsigned char>(p[j] - c'0') < 10:
            j += 1
        if j == frac_start:
            return _jr_fail(s, i, "bad number")
        s.is_int = 0
        if int_digits == 0:
            digits = frac_start
            while digits < j and p[digits] == c'0':
                digits += 1
            frac_zeros = digits - frac_start
            frac_nonzero = digits < j
    if j < n and (p[j] == c'e' or p[j] == c'E'):
        j += 1
        if j < n and (p[j] == c'+' or p[j] == c'-'):
            negative_exp = p[j] == c'-'
            j += 1
        digits = j
        while j < n and <unsigned char>(p[j] - c'0') < 10:
            if exponent < 1000000000:
                exponent = exponent * 10 + (p[j] - c'0')
            j += 1
        if j == digits:
            return _jr_fail(s, i, "bad number")
        s.is_int = 0
        if negative_exp:
            exponent = -exponent
    # RFC 8259 §6 lets an implementation limit the range of numbers.  orjson refuses any
    # number that is infinite as a double (1e400, a 310-digit integer); we refuse the same
    # ones, so what the scanner passes the next JSON parser accepts.  `magnitude` is the
    # decimal exponent of the leading digit; below 308 the value is < 1e308 and finite,
    # so only the rare rest pays for an exact conversion.
    if int_digits > 0:
        magnitude = int_digits - 1 + exponent
    elif frac_nonzero:
        magnitude = exponent - frac_zeros - 1
    else:
        return j  # zero
    if magnitude >= 308 and _jr_number_overflows(p, i, j):
        return _jr_fail(s, i, "number out of range")
    return j


cdef inline Py_ssize_t _jr_value(JrScan* s, Py_ssize_t i, int depth, JrVal* out) noexcept:
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef Py_ssize_t end
    cdef int tag
    cdef unsigned char c
    if i >= n:
        return _jr_fail(s, i, "expected a value")
    c = p[i]
    if c == c'"':
        end = _jr_string(s, i)
        tag = JT_STRING
    elif c == c'{' or c == c'[':
        end = _jr_container(s, i, depth + 1)
        tag = JT_OBJECT if c == c'{' else JT_ARRAY
    elif c == c'-' or c'0' <= c <= c'9':
        end = _jr_number(s, i)
        tag = JT_INT if s.is_int else JT_FLOAT
    elif c == c't' and n - i >= 4 and memcmp(p + i, b"true", 4) == 0:
        end = i + 4
        tag = JT_TRUE
    elif c == c'f' and n - i >= 5 and memcmp(p + i, b"false", 5) == 0:
        end = i + 5
        tag = JT_FALSE
    elif c == c'n' and n - i >= 4 and memcmp(p + i, b"null", 4) == 0:
        end = i + 4
        tag = JT_NULL
    else:
        return _jr_fail(s, i, "expected a value")
    if end >= 0 and out != NULL:
        out.start = i
        out.end = end
        out.tag = tag
        out.escaped = tag == JT_STRING and s.escaped
    return end


# ---------------------------------------------------------------------------------------
# Structure we skip (RFC 8259 §4 objects, §5 arrays)
# ---------------------------------------------------------------------------------------

cdef Py_ssize_t _jr_container(JrScan* s, Py_ssize_t i, int depth) noexcept:
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef unsigned char stack[JR_MAX_DEPTH + 1]  # the open brackets; depth >= 1 keeps top < 512
    cdef int top = 0
    cdef int state = SK_OPEN
    cdef unsigned char c
    while True:
        if state == SK_AFTER:
            i = _jr_ws(p, i, n)
            if i >= n:
                return _jr_fail(s, i, "expected ',' or a closing bracket")
            c = p[i]
            if c == c',':
                i = _jr_ws(p, i + 1, n)
                state = SK_KEY if stack[top - 1] == c'{' else SK_VALUE
            elif c == stack[top - 1] + 2:  # '{' + 2 == '}', '[' + 2 == ']'
                i += 1
                top -= 1
                if top == 0:
                    return i
            else:
                return _jr_fail(s, i, "expected ',' or a closing bracket")
        elif state == SK_VALUE:
            if i >= n:
                return _jr_fail(s, i, "expected a value")
            c = p[i]
            if c == c'"':
                i = _jr_string(s, i)
            elif c == c'{' or c == c'[':
                state = SK_OPEN
                continue
            elif c == c'-' or c'0' <= c <= c'9':
                i = _jr_number(s, i)
            else:
                i = _jr_value(s, i, depth + top - 1, NULL)  # literals, or the fault
            if i < 0:
                return -1
            state = SK_AFTER
        elif state == SK_KEY:
            if i >= n or p[i] != c'"':
                return _jr_fail(s, i, "expected a string key")
            i = _jr_string(s, i)
            if i < 0:
                return -1
            i = _jr_ws(p, i, n)
            if i >= n or p[i] != c':':
                return _jr_fail(s, i, "expected ':'")
            i = _jr_ws(p, i + 1, n)
            state = SK_VALUE
        else:  # SK_OPEN: p[i] is '{' or '['
            if depth + top > JR_MAX_DEPTH:
                return _jr_fail(s, i, "nesting deeper than 512")
            c = p[i]
            if MCPFAST_DEBUG:
                assert c == c'{' or c == c'['
            stack[top] = c
            top += 1
            i = _jr_ws(p, i + 1, n)
            if i < n and p[i] == c + 2:
                i += 1
                top -= 1
                if top == 0:
                    return i
                state = SK_AFTER
            else:
                state = SK_KEY if c == c'{' else SK_VALUE


# ---------------------------------------------------------------------------------------
# Objects we look into: the message, params, params._meta, error
# ---------------------------------------------------------------------------------------

cdef Py_ssize_t _jr_unescape(const unsigned char* p, Py_ssize_t a, Py_ssize_t b, unsigned char* out) noexcept nogil:
    # Input validated by _jr_string, so every escape is complete and surrogates are paired.
    # Each escape is at least as long as the UTF-8 it stands for, hence room for b - a.
    cdef Py_ssize_t o = 0
    cdef unsigned char c
    cdef long unit
    while a < b:
        c = p[a]
        if c != c'\\':
            out[o] = c
            o += 1
            a += 1
            continue
        c = p[a + 1]
        a += 2
        if c == c'u':
            unit = _jr_hex4(p, a, b)
            a += 4
            if 0xD800 <= unit <= 0xDBFF:
                unit = 0x10000 + ((unit - 0xD800) << 10) + (_jr_hex4(p, a + 2, b) - 0xDC00)
                a += 6
            if unit < 0x80:
                out[o] = <unsigned char>unit
                o += 1
            elif unit < 0x800:
                out[o] = 0xC0 | (unit >> 6)
                out[o + 1] = 0x80 | (unit & 0x3F)
                o += 2
            elif unit < 0x10000:
                out[o] = 0xE0 | (unit >> 12)
                out[o + 1] = 0x80 | ((unit >> 6) & 0x3F)
                out[o + 2] = 0x80 | (unit & 0x3F)
                o += 3
            else:
                out[o] = 0xF0 | (unit >> 18)
                out[o + 1] = 0x80 | ((unit >> 12) & 0x3F)
                out[o + 2] = 0x80 | ((unit >> 6) & 0x3F)
                out[o + 3] = 0x80 | (unit & 0x3F)
                o += 4
        elif c == c'b':
            out[o] = 0x08
            o += 1
        elif c == c'f':
            out[o] = 0x0C
            o += 1
        elif c == c'n':
            out[o] = 0x0A
            o += 1
        elif c == c'r':
            out[o] = 0x0D
            o += 1
        elif c == c't':
            out[o] = 0x09
            o += 1
        else:  # '"', '\\', '/'
            out[o] = c
            o += 1
    return o


cdef int _jr_key(JrScan* s, Py_ssize_t start, Py_ssize_t end) noexcept:
    # Keys are decided by their unescaped value (RFC 8259 §7): "meth\u006fd" is `method`.
    # The longest key we know has 39 characters and each costs at most 6 escaped bytes, so
    # an escaped key longer than 240 bytes is none of ours.
    cdef unsigned char unescaped[256]
    cdef const unsigned char* q = s.p + start + 1
    cdef Py_ssize_t length = end - start - 2
    if s.escaped:
        if length > 240:
            return K_OTHER
        length = _jr_unescape(s.p, start + 1, end - 1, unescaped)
        q = unescaped
    if length == 2:
        return K_ID if memcmp(q, b"id", 2) == 0 else K_OTHER
    if length == 3:
        return K_URI if memcmp(q, b"uri", 3) == 0 else K_OTHER
    if length == 4:
        if memcmp(q, b"name", 4) == 0:
            return K_NAME
        return K_CODE if memcmp(q, b"code", 4) == 0 else K_OTHER
    if length == 5:
        if memcmp(q, b"error", 5) == 0:
            return K_ERROR
        return K_META if memcmp(q, b"_meta", 5) == 0 else K_OTHER
    if length == 6:
        if memcmp(q, b"method", 6) == 0:
            return K_METHOD
        if memcmp(q, b"params", 6) == 0:
            return K_PARAMS
        if memcmp(q, b"result", 6) == 0:
            return K_RESULT
        return K_CURSOR if memcmp(q, b"cursor", 6) == 0 else K_OTHER
    if length == 7:
        return K_JSONRPC if memcmp(q, b"jsonrpc", 7) == 0 else K_OTHER
    if length == 9:
        return K_REQUEST_ID if memcmp(q, b"requestId", 9) == 0 else K_OTHER
    if length == 13:
        return K_PROGRESS_TOKEN if memcmp(q, b"progressToken", 13) == 0 else K_OTHER
    if length == 39:
        if memcmp(q, b"io.modelcontextprotocol/protocolVersion", 39) == 0:
            return K_PROTOCOL_VERSION
    return K_OTHER


cdef inline JrVal* _jr_slot(JrFound* f, int level, int key) noexcept nogil:
    if level == LV_TOP:
        if key == K_JSONRPC:
            return &f.jsonrpc
        if key == K_METHOD:
            return &f.method
        if key == K_ID:
            return &f.id
        if key == K_PARAMS:
            return &f.params
        if key == K_RESULT:
            return &f.result
        if key == K_ERROR:
            return &f.error
    elif level == LV_PARAMS:
        if key == K_NAME:
            return &f.name
        if key == K_URI:
            return &f.uri
        if key == K_CURSOR:
            return &f.cursor
        if key == K_REQUEST_ID:
            return &f.request_id
    elif level == LV_META:
        if key == K_PROGRESS_TOKEN:
            return &f.progress_token
        if key == K_PROTOCOL_VERSION:
            return &f.protocol_version
    elif level == LV_ERROR:
        if key == K_CODE:
            return &f.error_code
    return NULL


cdef Py_ssize_t _jr_object(JrScan* s, Py_ssize_t i, int depth, int level, JrFound* f) noexcept:
    cdef const unsigned char* p = s.p
    cdef Py_ssize_t n = s.n
    cdef Py_ssize_t kstart, vstart
    cdef int key, inner
    cdef JrVal* slot
    if depth > JR_MAX_DEPTH:
        return _jr_fail(s, i, "nesting deeper than 512")
    i = _jr_ws(p, i + 1, n)
    if i < n and p[i] == c'}':
        return i + 1
    while True:
        if i >= n or p[i] != c'"':
            return _jr_fail(s, i, "expected a string key")
        kstart = i
        i = _jr_string(s, i)
        if i < 0:
            return -1
        key = _jr_key(s, kstart, i)
        i = _jr_ws(p, i, n)
        if i >= n or p[i] != c':':
            return _jr_fail(s, i, "expected ':'")
        i = _jr_ws(p, i + 1, n)
        # A repeated key replaces all an earlier one gave (last one wins, as in orjson), so
        # what an earlier params / _meta / error contributed is forgotten first.
        inner = -1
        if level == LV_TOP and key == K_PARAMS:
            f.name.tag = f.uri.tag = f.cursor.tag = f.request_id.tag = JT_ABSENT
            f.progress_token.tag = f.protocol_version.tag = JT_ABSENT
            inner = LV_PARAMS
        elif level == LV_TOP and key == K_ERROR:
            f.error_code.tag = JT_ABSENT
            inner = LV_ERROR
        elif level == LV_PARAMS and key == K_META:
            f.progress_token.tag = f.protocol_version.tag = JT_ABSENT
            inner = LV_META
        slot = _jr_slot(f, level, key)
        if inner >= 0 and i < n and p[i] == c'{':
            vstart = i
            i = _jr_object(s, i, depth + 1, inner, f)
            if i < 0:
                return -1
            if slot != NULL:
                slot.start = vstart
                slot.end = i
                slot.tag = JT_OBJECT
                slot.escaped = 0
        else:
            i = _jr_value(s, i, depth, slot)
            if i < 0:
                return -1
        i = _jr_ws(p, i, n)
        if i >= n:
            return _jr_fail(s, i, "expected ',' or '}'")
        if p[i] == c',':
            i = _jr_ws(p, i + 1, n)
        elif p[i] == c'}':
            return i + 1
        else:
            return _jr_fail(s, i, "expected ',' or '}'")


cdef inline void _jr_found_init(JrFound* f, Py_ssize_t start, Py_ssize_t index) noexcept nogil:
    memset(f, 0, sizeof(JrFound))  # every tag JT_ABSENT
    f.start = start
    f.end = -1
    f.index = index


# ---------------------------------------------------------------------------------------
# Judging and decoding (JSON-RPC 2.0 §4 request, §4.1 notification, §5 response, §6 batch)
# ---------------------------------------------------------------------------------------

cdef object _jr_text(const unsigned char* p, JrVal* v):
    cdef Py_ssize_t length = v.end - v.start - 2
    cdef unsigned char* buf
    if not v.escaped:
        return PyUnicode_DecodeUTF8(<const char*>p + v.start + 1, length, NULL)
    buf = <unsigned char*>PyMem_Malloc(length + 1)
    if buf == NULL:
        raise MemoryError()
    try:
        length = _jr_unescape(p, v.start + 1, v.end - 1, buf)
        return PyUnicode_DecodeUTF8(<const char*>buf, length, NULL)
    finally:
        PyMem_Free(buf)


cdef object _jr_int(const unsigned char* p, JrVal* v):
    cdef Py_ssize_t a = v.start
    cdef long long acc = 0
    cdef bint negative = p[a] == c'-'
    if negative:
        a += 1
    if v.end - a <= 18:  # fits a long long; longer ones (<= 309 digits) go through int()
        while a < v.end:
            acc = acc * 10 + (p[a] - c'0')
            a += 1
        return -acc if negative else acc
    return int(PyBytes_FromStringAndSize(<const char*>p + v.start, v.end - v.start))


cdef object _jr_report(Envelope env, int slot, const unsigned char* p, JrVal* v, bint with_string, bint with_int):
    if v.tag == JT_STRING and with_string:
        env._span[2 * slot] = v.start
        env._span[2 * slot + 1] = v.end
        return _jr_text(p, v)
    if v.tag == JT_INT and with_int:
        env._span[2 * slot] = v.start
        env._span[2 * slot + 1] = v.end
        return _jr_int(p, v)
    return None


cdef object _jr_invalid(str why, object element):
    where = "" if element is None else f" (batch element {element})"
    return ProtocolError(f"invalid JSON-RPC message{where}: {why}", 400, -32600)


cdef inline bint _jr_is_version(const unsigned char* p, JrVal* v):
    if v.tag != JT_STRING:
        return False
    if not v.escaped:
        return v.end - v.start == 5 and memcmp(p + v.start, b'"2.0"', 5) == 0
    return _jr_text(p, v) == "2.0"


cdef Envelope _jr_envelope(const unsigned char* p, JrFound* f, object element):
    # The checks run in the same order as in the twin, so the first complaint is the same.
    cdef Envelope env
    cdef int kind, k
    if not _jr_is_version(p, &f.jsonrpc):
        raise _jr_invalid('"jsonrpc" must be "2.0"', element)
    if f.method.tag != JT_ABSENT and f.method.tag != JT_STRING:
        raise _jr_invalid('"method" must be a string', element)
    if f.id.tag != JT_ABSENT and f.id.tag != JT_STRING and f.id.tag != JT_INT and f.id.tag != JT_NULL:
        raise _jr_invalid('"id" must be a string, an integer or null', element)
    if f.result.tag != JT_ABSENT and f.error.tag != JT_ABSENT:
        raise _jr_invalid('both "result" and "error"', element)
    if f.method.tag != JT_ABSENT:
        if f.result.tag != JT_ABSENT or f.error.tag != JT_ABSENT:
            raise _jr_invalid('a request cannot carry "result" or "error"', element)
        kind = 1 if f.id.tag != JT_ABSENT else 2
    elif f.result.tag == JT_ABSENT and f.error.tag == JT_ABSENT:
        raise _jr_invalid('no "method", "result" or "error"', element)
    elif f.id.tag == JT_ABSENT:
        raise _jr_invalid('a response needs an "id"', element)
    else:
        kind = 3 if f.result.tag != JT_ABSENT else 4

    env = Envelope.__new__(Envelope)
    for k in range(2 * JR_NSPANS):
        env._span[k] = -1
    env.kind = kind
    env.start = f.start
    env.end = f.end
    if f.method.tag == JT_STRING:
        env.method = _jr_text(p, &f.method)
    if f.id.tag != JT_ABSENT:
        env._span[2 * SP_ID] = f.id.start
        env._span[2 * SP_ID + 1] = f.id.end
        env.id = _jr_report(env, SP_ID, p, &f.id, True, True)
    if f.params.tag == JT_OBJECT or f.params.tag == JT_ARRAY:  # JSON-RPC §4.2: structured
        env._span[2 * SP_PARAMS] = f.params.start
        env._span[2 * SP_PARAMS + 1] = f.params.end
    env.name = _jr_report(env, SP_NAME, p, &f.name, True, False)
    env.uri = _jr_report(env, SP_URI, p, &f.uri, True, False)
    env.cursor = _jr_report(env, SP_CURSOR, p, &f.cursor, True, False)
    env.progress_token = _jr_report(env, SP_PROGRESS_TOKEN, p, &f.progress_token, True, True)
    env.request_id = _jr_report(env, SP_REQUEST_ID, p, &f.request_id, True, True)
    env.protocol_version = _jr_report(env, SP_PROTOCOL_VERSION, p, &f.protocol_version, True, False)
    if f.result.tag != JT_ABSENT:
        env._span[2 * SP_RESULT] = f.result.start
        env._span[2 * SP_RESULT + 1] = f.result.end
    if f.error.tag != JT_ABSENT:
        env._span[2 * SP_ERROR] = f.error.start
        env._span[2 * SP_ERROR + 1] = f.error.end
        if f.error_code.tag == JT_INT:
            env.error_code = _jr_int(p, &f.error_code)
    return env


cdef object _jr_parse_error(JrScan* s):
    if MCPFAST_DEBUG:
        assert s.err != NULL
    why = s.err.decode("ascii")
    return ProtocolError(f"invalid JSON at byte {s.err_pos}: {why}", 400, -32700)


cdef object _jr_scan(const unsigned char* p, Py_ssize_t n):
    cdef JrScan s
    cdef JrFound one
    cdef JrFound* many = NULL
    cdef JrFound* grown
    cdef Py_ssize_t count = 0, capacity = 0, index = 0, not_object = -1, k
    cdef Py_ssize_t i, end
    s.p = p
    s.n = n
    s.err = NULL
    s.err_pos = 0
    s.escaped = 0
    s.is_int = 0
    i = _jr_ws(p, 0, n)
    if i >= n:
        _jr_fail(&s, i, "no JSON value")
        raise _jr_parse_error(&s)

    if p[i] == c'{':
        _jr_found_init(&one, i, 0)
        end = _jr_object(&s, i, 1, LV_TOP, &one)
        if end < 0:
            raise _jr_parse_error(&s)
        one.end = end
        if _jr_ws(p, end, n) != n:  # RFC 8259 §2: JSON-text = ws value ws
            _jr_fail(&s, _jr_ws(p, end, n), "data after the JSON value")
            raise _jr_parse_error(&s)
        return _jr_envelope(p, &one, None)

    if p[i] != c'[':
        end = _jr_value(&s, i, 0, NULL)
        if end >= 0 and _jr_ws(p, end, n) != n:
            _jr_fail(&s, _jr_ws(p, end, n), "data after the JSON value")
        if s.err != NULL:
            raise _jr_parse_error(&s)
        raise _jr_invalid("not an object", None)

    # A batch (JSON-RPC 2.0 §6): walk every element before judging any.
    try:
        end = _jr_ws(p, i + 1, n)
        if end < n and p[end] == c']':
            end += 1
        else:
            while True:
                if end < n and p[end] == c'{':
                    if count == capacity:
                        capacity = 2 * capacity + 4
                        grown = <JrFound*>PyMem_Realloc(many, capacity * sizeof(JrFound))
                        if grown == NULL:
                            raise MemoryError()
                        many = grown
                    _jr_found_init(&many[count], end, index)
                    end = _jr_object(&s, end, 2, LV_TOP, &many[count])
                    many[count].end = end
                    count += 1
                else:
                    end = _jr_value(&s, end, 1, NULL)
                    if not_object < 0:
                        not_object = index
                if end < 0:
                    raise _jr_parse_error(&s)
                end = _jr_ws(p, end, n)
                if end < n and p[end] == c',':
                    end = _jr_ws(p, end + 1, n)
                    index += 1
                elif end < n and p[end] == c']':
                    end += 1
                    break
                else:
                    _jr_fail(&s, end, "expected ',' or ']'")
                    raise _jr_parse_error(&s)
        if _jr_ws(p, end, n) != n:
            _jr_fail(&s, _jr_ws(p, end, n), "data after the JSON value")
            raise _jr_parse_error(&s)
        if count == 0 and not_object < 0:
            raise _jr_invalid("empty batch", None)
        out = []
        for k in range(count):
            if 0 <= not_object < many[k].index:
                break
            out.append(_jr_envelope(p, &many[k], many[k].index))
        if not_object >= 0:
            raise _jr_invalid("not an object", not_object)
        return out
    finally:
        PyMem_Free(many)


cdef object _jr_span(Envelope env, int slot):
    if env._span[2 * slot] < 0:
        return None
    return (env._span[2 * slot], env._span[2 * slot + 1])


@cython.freelist(16)
cdef class Envelope:
    """What the scanner found in one JSON-RPC message (see ``_core.pyi``)."""

    @property
    def id_span(self):
        return _jr_span(self, SP_ID)

    @property
    def params_span(self):
        return _jr_span(self, SP_PARAMS)

    @property
    def name_span(self):
        return _jr_span(self, SP_NAME)

    @property
    def uri_span(self):
        return _jr_span(self, SP_URI)

    @property
    def cursor_span(self):
        return _jr_span(self, SP_CURSOR)

    @property
    def progress_token_span(self):
        return _jr_span(self, SP_PROGRESS_TOKEN)

    @property
    def request_id_span(self):
        return _jr_span(self, SP_REQUEST_ID)

    @property
    def protocol_version_span(self):
        return _jr_span(self, SP_PROTOCOL_VERSION)

    @property
    def result_span(self):
        return _jr_span(self, SP_RESULT)

    @property
    def error_span(self):
        return _jr_span(self, SP_ERROR)

    def __repr__(self):
        return (f"Envelope(kind={self.kind}, method={self.method!r}, id={self.id!r}, "
                f"start={self.start}, end={self.end})")


def scan_jsonrpc(body):
    """Scan one JSON-RPC message or batch; see ``_core.pyi``."""
    cdef Py_buffer view
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        return _jr_scan(<const unsigned char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------------
# Splicing
# ---------------------------------------------------------------------------------------

cdef inline tuple _jr_range(object start, object end, Py_ssize_t n):
    # operator.index semantics (TypeError for non-integers), then 0 <= start <= end <= n.
    start = operator.index(start)
    end = operator.index(end)
    if not 0 <= start <= end <= n:
        raise ValueError(f"bad range [{start}, {end}) for a body of {n} bytes")
    return start, end


def splice(body, start, end, replacement):
    """``body[:start] + replacement + body[end:]`` in one allocation and three copies."""
    cdef Py_buffer view, rep
    cdef Py_ssize_t a, b
    cdef char* out
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        a, b = _jr_range(start, end, view.len)
        PyObject_GetBuffer(replacement, &rep, PyBUF_SIMPLE)
        try:
            result = PyBytes_FromStringAndSize(NULL, view.len - (b - a) + rep.len)
            out = PyBytes_AS_STRING(result)
            memcpy(out, view.buf, a)
            memcpy(out + a, rep.buf, rep.len)
            memcpy(out + a + rep.len, <const char*>view.buf + b, view.len - b)
            return result
        finally:
            PyBuffer_Release(&rep)
    finally:
        PyBuffer_Release(&view)


def splice_many(body, edits):
    """Apply non-overlapping edits (any order; two edits may not overlap or start at the
    same offset) in one allocation and one copy per piece."""
    cdef Py_buffer view
    cdef Py_ssize_t total, pos, prev_start, a, b, length
    cdef char* out
    cdef const char* src
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        checked = []
        for start, end, replacement in edits:
            start, end = _jr_range(start, end, view.len)
            if type(replacement) is not bytes:
                replacement = memoryview(replacement).tobytes()
            checked.append((start, end, replacement))
        checked.sort(key=_jr_first)
        total = view.len
        pos = 0
        prev_start = -1
        for a, b, replacement in checked:
            if a < pos or a == prev_start:
                raise ValueError(f"edit at [{a}, {b}) overlaps another edit")
            total += PyBytes_GET_SIZE(replacement) - (b - a)
            pos = b
            prev_start = a
        result = PyBytes_FromStringAndSize(NULL, total)
        out = PyBytes_AS_STRING(result)
        src = <const char*>view.buf
        pos = 0
        for a, b, replacement in checked:
            memcpy(out, src + pos, a - pos)
            out += a - pos
            length = PyBytes_GET_SIZE(replacement)
            memcpy(out, PyBytes_AS_STRING(replacement), length)
            out += length
            pos = b
        memcpy(out, src + pos, view.len - pos)
        return result
    finally:
        PyBuffer_Release(&view)


_jr_first = operator.itemgetter(0)
