/* Community ID v1 strings for many flows at once (capture/flowkeys.py builds the hash inputs
   with numpy; this does SHA-1 and base64 per row). Part of the _tcpstate extension, built by
   capture/build.py. SHA-1 as in FIPS 180-4, with the CPU's SHA extensions where it has them
   (asked once, by CPUID): 52,040 flows' IDs in 6.5 ms against 17.7 ms, the rows of a 2M-packet
   replay, most of them in the serial end of the replay. Both ways are checked against hashlib
   and the communityid package by the tests (`cid_sha_ext` picks one). */

#include <stdint.h>
#include <string.h>

#include "_tcpstate.h"

static uint32_t cid_rol(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

static void cid_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = cid_rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = cid_rol(a, 5) + f + e + k + w[i];
        e = d; d = c; c = cid_rol(b, 30); b = a; a = t;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

/* One block with the SHA extensions (sha1rnds4 and friends), 4 rounds an instruction: the
   schedule of Intel's reference code, written as a loop over the 20 groups of 4 rounds. */
__attribute__((target("sha,ssse3,sse4.1"))) static void cid_block_ext(uint32_t h[5],
                                                                        const uint8_t *p) {
    const __m128i mask = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0x1B);
    __m128i e[2] = {_mm_set_epi32((int)h[4], 0, 0, 0), _mm_setzero_si128()};
    const __m128i abcd0 = abcd, e0 = e[0];
    __m128i m[4];
    for (int k = 0; k < 20; k++) {
        __m128i *ea = &e[k & 1], *eb = &e[(k + 1) & 1];
        if (k < 4) m[k] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * k)), mask);
        const __m128i w = m[k & 3];
        *ea = k == 0 ? _mm_add_epi32(*ea, w) : _mm_sha1nexte_epu32(*ea, w);
        *eb = abcd;
        if (k >= 3 && k <= 18) m[(k + 1) & 3] = _mm_sha1msg2_epu32(m[(k + 1) & 3], w);
        switch (k / 5) {
            case 0: abcd = _mm_sha1rnds4_epu32(abcd, *ea, 0); break;
            case 1: abcd = _mm_sha1rnds4_epu32(abcd, *ea, 1); break;
            case 2: abcd = _mm_sha1rnds4_epu32(abcd, *ea, 2); break;
            default: abcd = _mm_sha1rnds4_epu32(abcd, *ea, 3); break;
        }
        if (k >= 1 && k <= 16) m[(k + 3) & 3] = _mm_sha1msg1_epu32(m[(k + 3) & 3], w);
        if (k >= 2 && k <= 17) m[(k + 2) & 3] = _mm_xor_si128(m[(k + 2) & 3], w);
    }
    /* after group 19 the next E is in e[0] (written by its `*eb = abcd`) */
    e[0] = _mm_sha1nexte_epu32(e[0], e0);
    abcd = _mm_shuffle_epi32(_mm_add_epi32(abcd, abcd0), 0x1B);
    _mm_storeu_si128((__m128i *)h, abcd);
    h[4] = (uint32_t)_mm_extract_epi32(e[0], 3);
}

static int cid_cpu_ext(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19))) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (int)((b >> 29) & 1); /* SHA */
}
#else
static void cid_block_ext(uint32_t h[5], const uint8_t *p) { cid_block(h, p); }
static int cid_cpu_ext(void) { return 0; }
#endif

static int cid_ext = -1; /* the SHA extensions in use: -1 until the CPU is asked */

/* use < 0: only report; 0: the portable code; 1: the SHA extensions if the CPU has them.
   Returns whether they are in use (the tests compare both ways). */
int cid_sha_ext(int use) {
    if (use == 0) cid_ext = 0;
    else if (use > 0 || cid_ext < 0) cid_ext = cid_cpu_ext();
    return cid_ext;
}

/* SHA-1 of a message of at most 119 bytes (two blocks). */
static void cid_sha1(const uint8_t *msg, int32_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t buf[128];
    memset(buf, 0, sizeof buf);
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    int blocks = len + 9 <= 64 ? 1 : 2;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[blocks * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
    int ext = cid_ext < 0 ? cid_sha_ext(-1) : cid_ext;
    for (int b = 0; b < blocks; b++) {
        if (ext) cid_block_ext(h, buf + 64 * b);
        else cid_block(h, buf + 64 * b);
    }
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

static const char CID_B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* rows: n inputs of `width` bytes (width <= 119); out: n strings of 30 bytes, "1:" followed
   by the base64 of the SHA-1 (28 characters with one '=' of padding). */
void community_ids(const uint8_t *rows, int64_t n, int32_t width, char *out) {
    if (width < 0 || width > 119) return;
    for (int64_t r = 0; r < n; r++) {
        uint8_t d[21];
        cid_sha1(rows + r * width, width, d);
        d[20] = 0;
        char *o = out + r * 30;
        o[0] = '1';
        o[1] = ':';
        o += 2;
        for (int i = 0; i < 21; i += 3) {
            uint32_t v = ((uint32_t)d[i] << 16) | ((uint32_t)d[i + 1] << 8) | d[i + 2];
            o[0] = CID_B64[(v >> 18) & 63];
            o[1] = CID_B64[(v >> 12) & 63];
            o[2] = CID_B64[(v >> 6) & 63];
            o[3] = CID_B64[v & 63];
            o += 4;
        }
        out[r * 30 + 29] = '=';  /* 20 bytes: the last group has one byte of padding */
    }
}

/* The flow table's direction-free 64-bit key of each packet's 5-tuple (capture/flowkeys.py,
   `canonical_hash`, which keeps the numpy definition this must equal): the endpoint that
   compares lower (address bytes, then port) first, each half of an address read as a
   little-endian 64-bit word, mixed with MurmurHash3's finaliser, starting from a secret `seed`
   (random per process): the table takes two tuples of one key for one flow, and without the
   seed anyone could search offline for two tuples of their own with one key (about 2^32
   tries with the free bits of an IPv6 /64) and have a connection counted inside another.
   Rows are 16-byte addresses. */
static uint64_t key_mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    return x ^ (x >> 33);
}

static uint64_t key_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void flow_keys(const uint8_t *src, const uint8_t *dst, const uint16_t *sport,
               const uint16_t *dport, const uint8_t *proto, int64_t n, uint64_t seed,
               uint64_t *out) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *s = src + 16 * i, *d = dst + 16 * i;
        int c = memcmp(s, d, 16);
        int swap = c > 0 || (c == 0 && sport[i] > dport[i]);
        const uint8_t *lo = swap ? d : s, *hi = swap ? s : d;
        uint64_t lp = swap ? dport[i] : sport[i], hp = swap ? sport[i] : dport[i];
        uint64_t ports = (lp << 24) | (hp << 8) | proto[i];
        uint64_t h = key_mix(key_le64(lo) ^ 0x9E3779B97F4A7C15ULL ^ seed);
        h = key_mix(h ^ key_le64(lo + 8));
        h = key_mix(h ^ key_le64(hi));
        h = key_mix(h ^ key_le64(hi + 8));
        out[i] = key_mix(h ^ ports);
    }
}

/* Group n keys by value, in order of first appearance: `table` has mask + 1 entries (a
   power of two > n), all -1 on entry; `first[g]` gets the first row of group g and `inv[i]`
   the group of row i. Returns the number of groups. The keys are public functions of packet
   headers, so the table position mixes in a secret `seed` (random per process): nobody can
   aim packets at one chain of the table to make a batch quadratic. */
int64_t group_keys(const uint64_t *h, int64_t n, int64_t *table, uint64_t mask, uint64_t seed,
                   int64_t *first, int64_t *inv) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t slot = key_mix(h[i] ^ seed) & mask;
        int64_t g;
        while ((g = table[slot]) >= 0 && h[first[g]] != h[i]) slot = (slot + 1) & mask;
        if (g < 0) {
            g = table[slot] = k++;
            first[g] = i;
        }
        inv[i] = g;
    }
    return k;
}
