/* DNS message scan for capture/dnsscan.py (part of the _tcpstate extension, built by
   capture/build.py). It reads what capture/dnsparse.py reads -- header, the query name, type
   and class, and each answer's type, TTL and text -- for a whole batch of messages in one call,
   and gives up on a message (status 1) whenever anything is unusual (a read error anywhere,
   a long name, many answers), so that the Python parser decides those messages and the two
   paths never disagree. Every read is bounds-checked against the message. */

#include <stdint.h>
#include <string.h>

#include "_tcpstate.h"
#include <stdio.h>
#include <arpa/inet.h>

#define DNS_QMAX 256        /* bytes of query name kept; longer: Python */
#define DNS_MAX_ANS 16      /* answers per message; more: Python */
#define DNS_TEXT_PER_ANS 64 /* average text bytes per answer slot */

enum { DH_STATUS, DH_ID, DH_OP, DH_QFROM, DH_QTYPE, DH_QCLASS, DH_NANS, DH_FIRST, DH_N };

/* Name at pos (compression pointers followed at most 32 times), labels joined by '.'.
   0: ok; -1: malformed; -2: longer than cap. */
static int dns_name(const uint8_t *msg, int32_t n, int32_t pos, uint8_t *out, int32_t cap,
                    int32_t *out_len, int32_t *after) {
    int32_t end = -1, jumps = 0, ol = 0, labels = 0;
    for (;;) {
        if (pos >= n) return -1;
        uint8_t c = msg[pos];
        if (c >= 0xC0) {
            if (pos + 1 >= n || jumps >= 32) return -1;
            if (end < 0) end = pos + 2;
            pos = ((c & 0x3F) << 8) | msg[pos + 1];
            jumps++;
            continue;
        }
        if (c >= 0x40) return -1;
        if (c == 0) {
            *out_len = ol;
            *after = end >= 0 ? end : pos + 1;
            return 0;
        }
        if (pos + 1 + c > n) return -1;
        if (labels) {
            if (ol + 1 > cap) return -2;
            out[ol++] = '.';
        }
        if (ol + c > cap) return -2;
        memcpy(out + ol, msg + pos + 1, c);
        ol += c;
        labels++;
        pos += 1 + c;
    }
}

static int dns16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

static uint32_t rd32be(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Text of one answer's rdata into out (cap bytes): >= 0 its length, -1 "the type's name"
   (Python renders it), -2 give the message to Python. */
static int32_t dns_rdata(const uint8_t *msg, int32_t n, int rtype, int32_t start, int32_t rdlen,
                         uint8_t *out, int32_t cap) {
    int32_t len = 0, after = 0;
    if (rtype == 1 && rdlen == 4) {
        char t[INET_ADDRSTRLEN];
        if (!inet_ntop(AF_INET, msg + start, t, sizeof t)) return -2;
        len = (int32_t)strlen(t);
        if (len > cap) return -2;
        memcpy(out, t, len);
        return len;
    }
    if (rtype == 28 && rdlen == 16) {
        char t[INET6_ADDRSTRLEN];
        if (!inet_ntop(AF_INET6, msg + start, t, sizeof t)) return -2;
        len = (int32_t)strlen(t);
        if (len > cap) return -2;
        memcpy(out, t, len);
        return len;
    }
    int32_t at = -1;
    if (rtype == 2 || rtype == 5 || rtype == 12) at = start;
    else if (rtype == 15 && rdlen > 2) at = start + 2;
    else if (rtype == 33 && rdlen > 6) at = start + 6;
    if (at >= 0) return dns_name(msg, n, at, out, cap, &len, &after) == 0 ? len : -2;
    if (rtype == 16) {
        int32_t count = 0, p = 0;
        while (p < rdlen) {
            p += 1 + msg[start + p];
            count++;
        }
        char t[40];
        len = snprintf(t, sizeof t, "TXT %d strings", (int)count);
        if (len < 0 || len > cap) return -2;
        memcpy(out, t, len);
        return len;
    }
    return -1;
}

/* One message; 0 ok, 1 give it to Python. Answers go to ans_* from index a0 on. */
static int dns_one(const uint8_t *msg, int32_t n, int32_t *h, uint8_t *qname, int32_t *qlen,
                   int64_t a0, int64_t max_ans, int32_t *ans_type, uint32_t *ans_ttl,
                   int32_t *ans_off, int32_t *ans_len, uint8_t *text, int64_t text_cap,
                   int64_t *text_used) {
    if (n < 12) return 1;
    int qd = dns16(msg + 4), an = dns16(msg + 6);
    h[DH_ID] = dns16(msg);
    h[DH_OP] = dns16(msg + 2);
    h[DH_QFROM] = 0;
    int32_t pos = 12, after = 0, l = 0;
    if (qd > 64) qd = 64;
    if (an > 64) an = 64;
    for (int i = 0; i < qd; i++) {
        uint8_t scratch[DNS_QMAX];
        if (dns_name(msg, n, pos, i == 0 ? qname : scratch, DNS_QMAX, &l, &after) != 0) return 1;
        pos = after;
        if (pos + 4 > n) return 1;
        if (i == 0) {
            *qlen = l;
            h[DH_QFROM] = 1;
            h[DH_QTYPE] = dns16(msg + pos);
            h[DH_QCLASS] = dns16(msg + pos + 2);
        }
        pos += 4;
    }
    int32_t na = 0;
    int64_t used = *text_used;
    for (int i = 0; i < an; i++) {
        uint8_t scratch[DNS_QMAX];
        int first_name = (h[DH_QFROM] == 0 && i == 0);
        if (dns_name(msg, n, pos, first_name ? qname : scratch, DNS_QMAX, &l, &after) != 0)
            return 1;
        pos = after;
        if (pos + 10 > n) break;
        int rtype = dns16(msg + pos);
        uint32_t ttl = rd32be(msg + pos + 4);
        int32_t rdlen = dns16(msg + pos + 8);
        pos += 10;
        if (pos + rdlen > n) break;
        if (na >= DNS_MAX_ANS || a0 + na >= max_ans) return 1;
        int64_t room = text_cap - used;
        int32_t cap = room > DNS_QMAX ? DNS_QMAX : (int32_t)room;
        int32_t t = dns_rdata(msg, n, rtype, pos, rdlen, text + used, cap);
        if (t == -2) return 1;
        if (first_name) {
            *qlen = l;
            h[DH_QFROM] = 2;
            h[DH_QTYPE] = rtype;
            h[DH_QCLASS] = 0;
        }
        ans_type[a0 + na] = rtype;
        ans_ttl[a0 + na] = ttl;
        ans_off[a0 + na] = (int32_t)used;
        ans_len[a0 + na] = t;
        if (t > 0) used += t;
        na++;
        pos += rdlen;
    }
    h[DH_NANS] = na;
    *text_used = used;
    return 0;
}

/* Scan n messages (buf + off[i], len[i] bytes). hdr: DH_N int32 per message; qname: DNS_QMAX
   bytes per message; answers of message i are ans_*[hdr.first .. first + nans). Returns the
   number of answer slots used. */
int64_t dns_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
                 int32_t *hdr, uint8_t *qname, int32_t *qname_len, int64_t max_ans,
                 int32_t *ans_type, uint32_t *ans_ttl, int32_t *ans_off, int32_t *ans_len,
                 uint8_t *text, int64_t text_cap) {
    int64_t a = 0, used = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t *h = hdr + i * DH_N;
        memset(h, 0, sizeof(int32_t) * DH_N);
        qname_len[i] = 0;
        h[DH_FIRST] = (int32_t)a;
        int64_t used0 = used;
        if (len[i] < 0 || dns_one(buf + off[i], len[i], h, qname + i * DNS_QMAX, &qname_len[i],
                                  a, max_ans, ans_type, ans_ttl, ans_off, ans_len, text,
                                  text_cap, &used) != 0) {
            h[DH_STATUS] = 1;
            h[DH_NANS] = 0;
            used = used0;
            continue;
        }
        a += h[DH_NANS];
    }
    return a;
}
