# JSON-RPC envelope scanner and splice helpers (compiled; twin: _jsonrpc_py.py).
#
# Theory of operation.  A JSON-RPC body flows in through the buffer protocol and is read
# as `const unsigned char*`; one Envelope per message flows out: kind, method, id and the
# few params/_meta/error members a gateway routes on, as decoded values plus byte spans
# into the body.  The walk is a single left-to-right pass that validates every byte as
# JSON (RFC 8259) while building no Python object: it only records, in a JrFound
# struct, where the interesting values are.
#
# Two layers.  The lexical layer and the skipper are plain C (the verbatim block below),
# because they are the whole cost of a big body: most of a tools/call is the inside of
# long strings and of nested `arguments` we never look at.  A string is read in 32-byte
# blocks with SSE2 (x86-64 always has it; no runtime dispatch), one bit mask per block
# of the bytes that need a look ('"', '\\', controls, bytes >= 0x80), and every stop in
# the block is handled from that mask; elsewhere (ARM, or the last bytes) a 64-bit word
# is checked at a time (SWAR).  Short strings -- keys, enum values -- end in the first
# word and never reach the block loop.  Escapes and non-ASCII runs are validated in
# place (RFC 3629 ranges).  Numbers take an inline path for plain integers and
# decimals.  Containers we do not look into are skipped by one goto-driven state
# machine with a byte stack of open brackets, its state in registers.
#
# The Cython layer on top walks only the objects whose members matter (the message,
# params, params._meta, error), records where those values are, and -- once the whole
# text has proved to be JSON -- judges each message against JSON-RPC 2.0 and decodes the
# handful of reported strings and integers.  So broken JSON always gives -32700, never a
# -32600 that depends on where the damage was.  A value the gateway must rewrite is
# replaced with splice(): one allocation, three memcpys.
#
# "Validated" means the same for skipped values as for walked ones: full RFC 8259
# grammar, every string's escapes and UTF-8, every number's syntax and range, the
# nesting limit.  Faults are reported at the same offset with the same text as the twin.

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp, memset

cdef extern from *:
    """
    #include <math.h>
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    #define MCPFAST_JR_MAX_DEPTH 512
    /* The per-token helpers must melt into the skipper's loop; -O2 alone does not. */
    #if defined(__GNUC__)
    #define MCPFAST_JR_HOT static inline __attribute__((always_inline))
    #else
    #define MCPFAST_JR_HOT static inline
    #endif

    /* Every function reports a fault by storing a static text and an offset through
       (why, pos) -- only the first one sticks -- and returning -1. */
    static inline Py_ssize_t mcpfast_jr_fail(const char **why, Py_ssize_t *pos, Py_ssize_t at, const char *text) {
        if (*why == NULL) { *why = text; *pos = at; }
        return -1;
    }

    /* First offset >= i that is not JSON whitespace (RFC 8259 §2: space, tab, LF, CR). */
    static inline Py_ssize_t mcpfast_jr_ws(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) {
        while (i < n) {
            unsigned char c = p[i];
            if (c > 0x20 || (c != 0x20 && c != 0x0A && c != 0x0D && c != 0x09)) break;
            i++;
        }
        return i;
    }
    /* The common case (no whitespace at all) without a call. */
    #define MCPFAST_JR_WS(p, i, n) (((i) < (n) && (p)[i] > 0x20) ? (i) : mcpfast_jr_ws((p), (i), (n)))

    /* -- strings: RFC 8259 §7, UTF-8 per RFC 3629 §4 ------------------------------- */

    #define MCPFAST_JR_LOW7  0x7F7F7F7F7F7F7F7FULL
    #define MCPFAST_JR_HIGH  0x8080808080808080ULL
    #define MCPFAST_JR_LT20  0x6060606060606060ULL  /* + this sets bit 7 iff a 7-bit byte >= 0x20 */
    #define MCPFAST_JR_QUOTE 0x2222222222222222ULL
    #define MCPFAST_JR_BSL   0x5C5C5C5C5C5C5C5CULL
    /* A byte that ends a plain run inside a string: '"', '\\', a control, or non-ASCII. */
    #define MCPFAST_JR_STOPS(c) ((c) < 0x20 || (c) >= 0x80 || (c) == 0x22 || (c) == 0x5C)

    MCPFAST_JR_HOT uint64_t mcpfast_jr_load64(const unsigned char *p) {
        uint64_t w; memcpy(&w, p, 8); return w;  /* one unaligned load */
    }
    /* Bit 7 set in each byte of w that STOPS, exactly: the low 7 bits are compared by an
       addition that carries into bit 7 but never across bytes. */
    MCPFAST_JR_HOT uint64_t mcpfast_jr_special8(uint64_t w) {
        uint64_t low7 = w & MCPFAST_JR_LOW7;
        uint64_t control = ~(low7 + MCPFAST_JR_LT20);
        uint64_t quote = ~((low7 ^ MCPFAST_JR_QUOTE) + MCPFAST_JR_LOW7);
        uint64_t backslash = ~((low7 ^ MCPFAST_JR_BSL) + MCPFAST_JR_LOW7);
        return (w | control | quote | backslash) & MCPFAST_JR_HIGH;
    }
    /* Index, in memory order, of the first flagged byte of a SWAR mask m != 0. */
    MCPFAST_JR_HOT int mcpfast_jr_first_flag(uint64_t m) {
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
    #if defined(__SSE2__)
    /* One bit per byte of p[0:16) that STOPS.  The signed compare "< 0x20" catches the
       controls and, being signed, every byte >= 0x80 too. */
    MCPFAST_JR_HOT unsigned int mcpfast_jr_stops16(const unsigned char *p) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x22)),
                                                _mm_cmpeq_epi8(v, _mm_set1_epi8(0x5C))),
                                   _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
        return (unsigned int)_mm_movemask_epi8(hit);
    }
    #endif

    /* First offset >= j in p[0:n) whose byte STOPS, or n: a word at a time, then bytes. */
    MCPFAST_JR_HOT Py_ssize_t mcpfast_jr_plain_run(const unsigned char *p, Py_ssize_t j, Py_ssize_t n) {
        uint64_t m;
        while (j + 8 <= n) {
            m = mcpfast_jr_special8(mcpfast_jr_load64(p + j));
            if (m) return j + mcpfast_jr_first_flag(m);
            j += 8;
        }
        while (j < n && !MCPFAST_JR_STOPS(p[j])) j++;
        return j;
    }

    /* p[i] >= 0x80: validate the run of multi-byte UTF-8 sequences from there (RFC 3629
       §4: no overlongs C0/C1/E0 80-9F/F0 80-8F, no surrogates ED A0-BF, nothing above
       U+10FFFF) up to the next ASCII byte; its offset, or -1 at the first bad sequence.
       Three-byte sequences (most of CJK) are tested first. */
    static inline Py_ssize_t mcpfast_jr_utf8_run(const unsigned char *p, Py_ssize_t i, Py_ssize_t n,
                                                 const char **why, Py_ssize_t *pos) {
        unsigned char c, c1, lo, hi;
        while (i < n && (c = p[i]) >= 0x80) {
            if (c >= 0xE0 && c < 0xF0) {
                if (i + 2 >= n) break;
                c1 = p[i + 1];
                lo = c == 0xE0 ? 0xA0 : 0x80;
                hi = c == 0xED ? 0x9F : 0xBF;
                if (c1 < lo || c1 > hi || (p[i + 2] & 0xC0) != 0x80) break;
                i += 3;
            } else if (c >= 0xC2 && c < 0xE0) {
                if (i + 1 >= n || (p[i + 1] & 0xC0) != 0x80) break;
                i += 2;
            } else if (c >= 0xF0 && c < 0xF5) {
                if (i + 3 >= n) break;
                c1 = p[i + 1];
                lo = c == 0xF0 ? 0x90 : 0x80;
                hi = c == 0xF4 ? 0x8F : 0xBF;
                if (c1 < lo || c1 > hi || (p[i + 2] & 0xC0) != 0x80 || (p[i + 3] & 0xC0) != 0x80) break;
                i += 4;
            } else {
                break;
            }
        }
        if (i < n && p[i] >= 0x80) return mcpfast_jr_fail(why, pos, i, "invalid UTF-8");
        return i;
    }

    /* The code unit of the 4 hex digits at p[i], or -1 if fewer than 4 or not hex. */
    static inline long mcpfast_jr_hex4(const unsigned char *p, Py_ssize_t i, Py_ssize_t n) {
        long v = 0;
        int k;
        unsigned char c;
        if (i + 4 > n) return -1;
        for (k = 0; k < 4; k++) {
            c = p[i + k];
            if ((unsigned char)(c - '0') < 10) v = (v << 4) | (c - '0');
            else if ((unsigned char)((c | 0x20) - 'a') < 6) v = (v << 4) | ((c | 0x20) - 'a' + 10);
            else return -1;
        }
        return v;
    }

    /* p[i] is a backslash inside a string: the offset after the escape, or -1. */
    static Py_ssize_t mcpfast_jr_escape(const unsigned char *p, Py_ssize_t n, Py_ssize_t i,
                                        const char **why, Py_ssize_t *pos) {
        long unit, low;
        if (i + 1 >= n) return mcpfast_jr_fail(why, pos, i, "bad escape");
        switch (p[i + 1]) {
        case '"': case '\\\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            return i + 2;
        case 'u':
            break;
        default:
            return mcpfast_jr_fail(why, pos, i, "bad escape");
        }
        unit = mcpfast_jr_hex4(p, i + 2, n);
        if (unit < 0) return mcpfast_jr_fail(why, pos, i + 2, "bad \\\\u escape");
        /* RFC 8259 §7 admits a lone surrogate escape ("\\\\ud800") syntactically, but it
           names no character; orjson refuses it, and so do we, so that what we pass the
           next parser accepts: a high surrogate must be followed at once by an escaped
           low one, and a low one never stands alone. */
        if (unit >= 0xD800 && unit <= 0xDBFF) {
            if (i + 7 < n && p[i + 6] == '\\\\' && p[i + 7] == 'u') {
                low = mcpfast_jr_hex4(p, i + 8, n);
                if (low >= 0xDC00 && low <= 0xDFFF) return i + 12;
                if (low < 0) return mcpfast_jr_fail(why, pos, i + 8, "bad \\\\u escape");
            }
            return mcpfast_jr_fail(why, pos, i, "lone surrogate escape");
        }
        if (unit >= 0xDC00 && unit <= 0xDFFF) return mcpfast_jr_fail(why, pos, i, "lone surrogate escape");
        return i + 6;
    }

    /* p[j] STOPS a plain run inside a string and is not '"': step over it -- an escape,
       or a whole run of non-ASCII UTF-8 -- and return the offset after it, or -1. */
    static inline Py_ssize_t mcpfast_jr_step(const unsigned char *p, Py_ssize_t n, Py_ssize_t j,
                                             const char **why, Py_ssize_t *pos) {
        unsigned char c = p[j];
        if (c == '\\\\') {
            if (j + 1 < n) {  /* the two-byte escapes inline, \\uXXXX out of line */
                c = p[j + 1];
                if (c == 'n' || c == '"' || c == '\\\\' || c == 't' || c == '/' || c == 'r' || c == 'b' || c == 'f')
                    return j + 2;
            }
            return mcpfast_jr_escape(p, n, j, why, pos);
        }
        if (c < 0x20) return mcpfast_jr_fail(why, pos, j, "raw control character in string");
        return mcpfast_jr_utf8_run(p, j, n, why, pos);
    }

    /* p[i] is '"': the offset after the closing quote of a valid string, or -1;
       *escaped tells whether it held a backslash escape.  With SSE2 the string is read in
       32-byte blocks (16 near the end) and one bit mask per block; every stop in a block
       is handled from that mask -- bits below the end of each step are cleared -- so text
       dense with escapes and accents costs no reload per stop.  The last < 16 bytes, and
       everything without SSE2, go a 64-bit word at a time. */
    static Py_ssize_t mcpfast_jr_string_full(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int *escaped,
                                             const char **why, Py_ssize_t *pos) {
        Py_ssize_t j = i + 1, k;
        int esc = 0;
    #if defined(__SSE2__)
        unsigned int m;
        Py_ssize_t width;
        while (j + 16 <= n) {
            if (j + 32 <= n) {
                m = mcpfast_jr_stops16(p + j) | (mcpfast_jr_stops16(p + j + 16) << 16);
                width = 32;
            } else {
                m = mcpfast_jr_stops16(p + j);
                width = 16;
            }
            k = j + width;
            while (m) {
                k = j + __builtin_ctz(m);
                if (p[k] == '"') {
                    *escaped = esc;
                    return k + 1;
                }
                esc |= p[k] == '\\\\';
                k = mcpfast_jr_step(p, n, k, why, pos);
                if (k < 0) return -1;
                if (k >= j + width) break;  /* the step left the block */
                m &= ~0u << (k - j);
                if (!m) k = j + width;
            }
            j = k;
        }
    #endif
        for (;;) {
            j = mcpfast_jr_plain_run(p, j, n);
            if (j >= n) return mcpfast_jr_fail(why, pos, n, "unterminated string");
            if (p[j] == '"') {
                *escaped = esc;
                return j + 1;
            }
            esc |= p[j] == '\\\\';
            j = mcpfast_jr_step(p, n, j, why, pos);
            if (j < 0) return -1;
        }
    }

    /* The same, with the commonest case inline: a short plain string (a key, an enum
       value) whose closing quote is the first stop in the 8 bytes after the opening one. */
    MCPFAST_JR_HOT Py_ssize_t mcpfast_jr_string(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int *escaped,
                                               const char **why, Py_ssize_t *pos) {
        uint64_t m;
        Py_ssize_t k;
        if (i + 9 <= n) {
            m = mcpfast_jr_special8(mcpfast_jr_load64(p + i + 1));
            if (m) {
                k = i + 1 + mcpfast_jr_first_flag(m);
                if (p[k] == '"') {
                    *escaped = 0;
                    return k + 1;
                }
            }
        }
        return mcpfast_jr_string_full(p, n, i, escaped, why, pos);
    }

    /* -- numbers: RFC 8259 §6 -------------------------------------------------------- */

    /* 1 if the number text s[0:len) is infinite as a double (Python's own correctly
       rounded conversion).  Only reached for magnitudes >= 1e308. */
    static int mcpfast_jr_overflows(const unsigned char *s, Py_ssize_t len) {
        char *text = (char *)PyMem_Malloc((size_t)len + 1);
        double v;
        if (text == NULL) return 1;  /* refuse rather than guess */
        memcpy(text, s, (size_t)len);
        text[len] = 0;
        v = PyOS_string_to_double(text, NULL, NULL);
        PyMem_Free(text);
        if (v == -1.0 && PyErr_Occurred()) {  /* cannot happen for validated text */
            PyErr_Clear();
            return 1;
        }
        return isinf(v) != 0;
    }

    /* p[i] is '-' or a digit: the offset after a valid number, or -1; *is_int is 1 when
       it has neither fraction nor exponent.  RFC 8259 §6 lets an implementation limit
       the range; orjson refuses any number that is infinite as a double (1e400, a
       310-digit integer), and so do we.  `magnitude` (the decimal exponent of the
       leading digit) below 308 proves the value finite, so only the rare rest pays for
       an exact conversion. */
    static Py_ssize_t mcpfast_jr_number_full(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int *is_int,
                                             const char **why, Py_ssize_t *pos) {
        Py_ssize_t j = i, first, int_digits = 0, frac_zeros = 0;
        long long exponent = 0, magnitude;
        int negative_exp = 0, frac_nonzero = 0;
        if (p[j] == '-') j++;
        if (j >= n) return mcpfast_jr_fail(why, pos, i, "bad number");
        if (p[j] == '0') {
            j++;
        } else if ((unsigned char)(p[j] - '1') < 9) {
            first = j++;
            while (j < n && (unsigned char)(p[j] - '0') < 10) j++;
            int_digits = j - first;
        } else {
            return mcpfast_jr_fail(why, pos, i, "bad number");
        }
        if (j >= n || (p[j] != '.' && (p[j] | 0x20) != 'e')) {  /* an integer: the common case */
            *is_int = 1;
            if (int_digits >= 309 && mcpfast_jr_overflows(p + i, j - i))
                return mcpfast_jr_fail(why, pos, i, "number out of range");
            return j;
        }
        *is_int = 0;
        if (p[j] == '.') {
            first = ++j;
            while (j < n && (unsigned char)(p[j] - '0') < 10) j++;
            if (j == first) return mcpfast_jr_fail(why, pos, i, "bad number");
            if (int_digits == 0) {  /* 0.000ddd: count the zeros before the first digit */
                frac_zeros = first;
                while (frac_zeros < j && p[frac_zeros] == '0') frac_zeros++;
                frac_nonzero = frac_zeros < j;
                frac_zeros -= first;
            }
        }
        if (j < n && (p[j] | 0x20) == 'e') {
            j++;
            if (j < n && (p[j] == '+' || p[j] == '-')) negative_exp = p[j++] == '-';
            first = j;
            while (j < n && (unsigned char)(p[j] - '0') < 10) {
                if (exponent < 1000000000) exponent = exponent * 10 + (p[j] - '0');
                j++;
            }
            if (j == first) return mcpfast_jr_fail(why, pos, i, "bad number");
            if (negative_exp) exponent = -exponent;
        }
        if (int_digits > 0) magnitude = int_digits - 1 + exponent;
        else if (frac_nonzero) magnitude = exponent - frac_zeros - 1;
        else return j;  /* zero */
        if (magnitude >= 308 && mcpfast_jr_overflows(p + i, j - i))
            return mcpfast_jr_fail(why, pos, i, "number out of range");
        return j;
    }

    /* The same, with the common cases inline: an integer of fewer than 309 digits, with or
       without a fraction (no exponent: such a value is below 1e308).  Anything else --
       an exponent, a long integer part, a fault -- goes to the full version above. */
    MCPFAST_JR_HOT Py_ssize_t mcpfast_jr_number(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int *is_int,
                                               const char **why, Py_ssize_t *pos) {
        Py_ssize_t first = i + (p[i] == '-'), j = first;
        while (j < n && (unsigned char)(p[j] - '0') < 10) j++;  /* the integer part */
        if (j == first || j - first >= 309) return mcpfast_jr_number_full(p, n, i, is_int, why, pos);
        *is_int = 1;
        if (p[first] == '0' && j - first > 1) return first + 1;  /* "01": the number is "0" */
        if (j < n && p[j] == '.') {
            first = ++j;
            while (j < n && (unsigned char)(p[j] - '0') < 10) j++;
            if (j == first) return mcpfast_jr_number_full(p, n, i, is_int, why, pos);
            *is_int = 0;
        }
        if (j < n && (p[j] | 0x20) == 'e') return mcpfast_jr_number_full(p, n, i, is_int, why, pos);
        return j;
    }

    /* -- containers we skip: RFC 8259 §4 objects, §5 arrays ------------------------------ */

    /* p[i] is '{' or '[' whose own depth is `depth` (the top-level value is 1): the
       offset after the whole container, or -1.  Iterative: `stack` holds the open
       brackets, so 512 levels cost 512 bytes, not 512 C frames. */
    static Py_ssize_t mcpfast_jr_skip(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, int depth,
                                      const char **why, Py_ssize_t *pos) {
        unsigned char stack[MCPFAST_JR_MAX_DEPTH + 1];
        int top = 0, flag;
        unsigned char c;
    open:  /* p[i] is '{' or '[' */
        if (depth + top > MCPFAST_JR_MAX_DEPTH) return mcpfast_jr_fail(why, pos, i, "nesting deeper than 512");
        c = p[i];
        stack[top++] = c;
        i = MCPFAST_JR_WS(p, i + 1, n);
        if (i < n && p[i] == c + 2) {  /* '{' + 2 == '}', '[' + 2 == ']' */
            i++;
            if (--top == 0) return i;
            goto after;
        }
        if (c == '[') goto value;
    key:
        if (i >= n || p[i] != '"') return mcpfast_jr_fail(why, pos, i, "expected a string key");
        i = mcpfast_jr_string(p, n, i, &flag, why, pos);
        if (i < 0) return -1;
        i = MCPFAST_JR_WS(p, i, n);
        if (i >= n || p[i] != ':') return mcpfast_jr_fail(why, pos, i, "expected ':'");
        i = MCPFAST_JR_WS(p, i + 1, n);
    value:
        if (i >= n) return mcpfast_jr_fail(why, pos, i, "expected a value");
        c = p[i];
        if (c == '"') {
            i = mcpfast_jr_string(p, n, i, &flag, why, pos);
            if (i < 0) return -1;
        } else if (c == '{' || c == '[') {
            goto open;
        } else if (c == '-' || (unsigned char)(c - '0') < 10) {
            i = mcpfast_jr_number(p, n, i, &flag, why, pos);
            if (i < 0) return -1;
        } else if (c == 't' && n - i >= 4 && memcmp(p + i, "true", 4) == 0) {
            i += 4;
        } else if (c == 'f' && n - i >= 5 && memcmp(p + i, "false", 5) == 0) {
            i += 5;
        } else if (c == 'n' && n - i >= 4 && memcmp(p + i, "null", 4) == 0) {
            i += 4;
        } else {
            return mcpfast_jr_fail(why, pos, i, "expected a value");
        }
    after:  /* a member or element is complete */
        i = MCPFAST_JR_WS(p, i, n);
        if (i < n) {
            c = p[i];
            if (c == ',') {
                i = MCPFAST_JR_WS(p, i + 1, n);
                if (stack[top - 1] == '{') goto key;
                goto value;
            }
            if (c == stack[top - 1] + 2) {
                i++;
                if (--top == 0) return i;
                goto after;
            }
        }
        return mcpfast_jr_fail(why, pos, i, "expected ',' or a closing bracket");
    }
    """
    Py_ssize_t mcpfast_jr_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil
    long mcpfast_jr_hex4(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil
    Py_ssize_t mcpfast_jr_string(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int* escaped,
                                 const char** why, Py_ssize_t* pos) noexcept
    Py_ssize_t mcpfast_jr_number(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int* is_int,
                                 const char** why, Py_ssize_t* pos) noexcept
    Py_ssize_t mcpfast_jr_skip(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, int depth,
                               const char** why, Py_ssize_t* pos) noexcept

import operator

KIND_REQUEST = 1
KIND_NOTIFICATION = 2
KIND_RESPONSE = 3
KIND_ERROR = 4


# ---------------------------------------------------------------------------------------
# The lexical layer, as the Cython walk uses it (the work is done in C above)
# ---------------------------------------------------------------------------------------

cdef inline Py_ssize_t _jr_fail(JrScan* s, Py_ssize_t pos, const char* why) noexcept:
    if s.err == NULL:
        s.err = why
        s.err_pos = pos
    return -1


cdef inline Py_ssize_t _jr_ws(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    if i < n and p[i] > 0x20:
        return i
    return mcpfast_jr_ws(p, i, n)


cdef inline Py_ssize_t _jr_string(JrScan* s, Py_ssize_t i) noexcept:
    cdef int escaped = 0
    i = mcpfast_jr_string(s.p, s.n, i, &escaped, &s.err, &s.err_pos)
    s.escaped = escaped
    return i


cdef inline Py_ssize_t _jr_number(JrScan* s, Py_ssize_t i) noexcept:
    cdef int is_int = 0
    i = mcpfast_jr_number(s.p, s.n, i, &is_int, &s.err, &s.err_pos)
    s.is_int = is_int
    return i


cdef inline Py_ssize_t _jr_container(JrScan* s, Py_ssize_t i, int depth) noexcept:
    return mcpfast_jr_skip(s.p, s.n, i, depth, &s.err, &s.err_pos)


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
            unit = mcpfast_jr_hex4(p, a, b)
            a += 4
            if 0xD800 <= unit <= 0xDBFF:
                unit = 0x10000 + ((unit - 0xD800) << 10) + (mcpfast_jr_hex4(p, a + 2, b) - 0xDC00)
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
    cdef unsigned int seen = 0  # bit per JrKey met in this object
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
        inner = -1
        if level == LV_TOP and key == K_PARAMS:
            inner = LV_PARAMS
        elif level == LV_TOP and key == K_ERROR:
            inner = LV_ERROR
        elif level == LV_PARAMS and key == K_META:
            inner = LV_META
        slot = _jr_slot(f, level, key)
        if slot != NULL or inner >= 0:
            # A member the gateway acts on, named twice: parsers disagree on which one
            # counts (orjson and JavaScript take the last, others the first), so the
            # message the gateway judged might not be the one a backend runs.  Refused.
            if seen & (1u << key):
                return _jr_fail(s, kstart, "duplicate member name")
            seen |= 1u << key
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

cdef extern from "Python.h":
    # With exc NULL an out-of-range value is clamped to PY_SSIZE_T_MIN/MAX, not raised.
    Py_ssize_t _jr_as_ssize "PyNumber_AsSsize_t" (object o, void* exc) except? -1


cdef int _jr_range(object start, object end, Py_ssize_t n, Py_ssize_t* a, Py_ssize_t* b) except -1:
    # operator.index semantics (TypeError for non-integers), then 0 <= start <= end <= n;
    # a clamped huge value fails the same check.
    start = PyNumber_Index(start)
    end = PyNumber_Index(end)
    a[0] = _jr_as_ssize(start, NULL)
    b[0] = _jr_as_ssize(end, NULL)
    if not 0 <= a[0] <= b[0] <= n:
        raise ValueError(f"bad range [{start}, {end}) for a body of {n} bytes")
    return 0


def splice(body, start, end, replacement):
    """``body[:start] + replacement + body[end:]`` in one allocation and three copies."""
    cdef Py_buffer view, rep
    cdef Py_ssize_t a, b
    cdef char* out
    PyObject_GetBuffer(body, &view, PyBUF_SIMPLE)
    try:
        _jr_range(start, end, view.len, &a, &b)
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


cdef bytes _jr_copy(object obj):
    # A bytes copy of any C-contiguous buffer (BufferError otherwise, as in splice()).
    cdef Py_buffer view
    PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
    try:
        return PyBytes_FromStringAndSize(<const char*>view.buf, view.len)
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
            _jr_range(start, end, view.len, &a, &b)
            if type(replacement) is not bytes:
                replacement = _jr_copy(replacement)
            checked.append((a, b, replacement))
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
