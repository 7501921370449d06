/* Flow-table accounting and row text for capture/flow/table.py and capture/flow/rows.py:
   one pass per batch over arrays the Python side owns (no Python object per packet or per
   flow), called through cffi, which releases the GIL. Every index is checked against the
   length it indexes: a bad index stops the pass with an error code, nothing is written
   out of bounds. Built into the tcpstate extension (capture/native/build.py). */

#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "_tcpstate.h"

/* Add rows [0, n) to their flows' counters: per row, slot[i] (< nslots) and direction
   (is_orig[i]: 0 = originator, 1 = responder index into the (nslots, 2) arrays). Packets
   count when count[i]; IP bytes are ip_len[i] for counted rows, else plen[i] (a later
   fragment's payload); payload bytes plen[i]; last_ts[s] is the max of the rows' ts; a flow
   without a first direction (first_dir[s] < 0) takes its first row's. Returns 0, or -1
   (nothing more written) at a row whose slot is out of range. */
int64_t flow_count(int64_t n, const int64_t *slot, const uint8_t *is_orig, const uint8_t *count,
                   const int64_t *ip_len, const int64_t *plen, const int64_t *ts, int64_t nslots,
                   int64_t *pkts, int64_t *ipb, int64_t *pbytes, int64_t *last_ts,
                   int8_t *first_dir) {
    for (int64_t i = 0; i < n; i++) {
        int64_t s = slot[i];
        if (s < 0 || s >= nslots) return -1;
        int d = is_orig[i] ? 0 : 1;
        int64_t j = s * 2 + d;
        if (count[i]) {
            pkts[j] += 1;
            ipb[j] += ip_len[i];
        } else {
            ipb[j] += plen[i];
        }
        pbytes[j] += plen[i];
        if (ts[i] > last_ts[s]) last_ts[s] = ts[i];
        if (first_dir[s] < 0) first_dir[s] = (int8_t)d;
    }
    return 0;
}

/* tcp_process over selected rows without gathering them first: row i of the pass is
   rows[i] (< nrows) of `slot` and `is_orig` and base + rows[i] (< ncols) of the packet
   columns. Same return as tcp_process (index into `rows`, or -1 when all were processed);
   -2 at a row, slot or column index out of range (nothing more processed). */
int64_t tcp_process_rows(tcpflow *flows, int64_t nslots, int64_t n, const int64_t *rows,
                         int64_t nrows, int64_t base, int64_t ncols, const int64_t *slot,
                         const uint8_t *is_orig, const uint8_t *flags, const uint32_t *seq,
                         const uint32_t *ack, const int64_t *plen, const int64_t *ts,
                         int64_t close_delay_ns) {
    for (int64_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        if (r < 0 || r >= nrows || base < 0 || base + r >= ncols) return -2;
        int64_t s = slot[r];
        if (s < 0 || s >= nslots) return -2;
        int64_t c = base + r;
        int32_t s32 = (int32_t)s;
        uint8_t o = is_orig[r] ? 1 : 0;
        int32_t len = plen[c] < 0 ? 0 : (plen[c] > INT32_MAX ? INT32_MAX : (int32_t)plen[c]);
        if (tcp_process(flows, 1, &s32, &o, &flags[c], &seq[c], &ack[c], &len, &ts[c],
                        close_delay_ns) == 0)
            return i;
    }
    return -1;
}

/* Decimal digits of one octet at p; returns how many (1 to 3). */
static int octet_text(char *p, unsigned v) {
    if (v >= 100) {
        p[0] = (char)('0' + v / 100);
        p[1] = (char)('0' + v / 10 % 10);
        p[2] = (char)('0' + v % 10);
        return 3;
    }
    if (v >= 10) {
        p[0] = (char)('0' + v / 10);
        p[1] = (char)('0' + v % 10);
        return 2;
    }
    p[0] = (char)('0' + v);
    return 1;
}

/* Text of n 16-byte addresses as an Arrow string column: offsets[0..n] (int32) and data
   (at most cap bytes). IPv4-mapped addresses print as a dotted quad, others as inet_ntop
   does, except addresses whose first 12 bytes are zero, which print as Python's
   ipaddress does ("::102:304", where glibc would print "::1.2.3.4"). Returns the bytes
   written, or -1 if cap is too small. */
int64_t addr_text(const uint8_t *addrs, int64_t n, int32_t *offsets, char *data, int64_t cap) {
    static const uint8_t v4pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t zero12[12] = {0};
    char tmp[48];
    int64_t w = 0;
    offsets[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *a = addrs + 16 * i;
        int len;
        if (memcmp(a, v4pre, 12) == 0) {
            len = 0;
            for (int j = 12; j < 16; j++) {
                if (j > 12) tmp[len++] = '.';
                len += octet_text(tmp + len, a[j]);
            }
        } else if (memcmp(a, zero12, 12) == 0 && (a[12] | a[13]) != 0) {
            len = snprintf(tmp, sizeof tmp, "::%x:%x", (a[12] << 8) | a[13], (a[14] << 8) | a[15]);
        } else {
            if (inet_ntop(AF_INET6, a, tmp, sizeof tmp) == NULL) return -1;
            len = (int)strlen(tmp);
        }
        if (len < 0 || len >= (int)sizeof tmp || w + len > cap || w + len > INT32_MAX) return -1;
        memcpy(data + w, tmp, (size_t)len);
        w += len;
        offsets[i + 1] = (int32_t)w;
    }
    return w;
}

/* n Zeek-like uids: 'C' and 16 base62 digits, the first 8 from r[2i] and the next 8 from
   r[2i+1] (each in [0, 62^8)), least significant digit first; out gets 17 bytes per uid.
   Returns 0, or -1 at a value out of range (nothing more written). */
int64_t uid_text(const int64_t *r, int64_t n, char *out) {
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    const int64_t top = 218340105584896LL; /* 62^8 */
    for (int64_t i = 0; i < n; i++) {
        char *o = out + 17 * i;
        o[0] = 'C';
        for (int half = 0; half < 2; half++) {
            int64_t v = r[2 * i + half];
            if (v < 0 || v >= top) return -1;
            for (int k = 0; k < 8; k++) {
                o[1 + half * 8 + k] = b62[v % 62];
                v /= 62;
            }
        }
    }
    return 0;
}

/* Community ID v1 of n flows whose protocol has ports (TCP, UDP, SCTP, ICMP, ICMPv6; other
   rows are skipped, their 30 bytes of `out` left as they are): the endpoints in order
   (address bytes, then port) unless an ICMP type is one-way (cp4/cp6: 256 counterpart types,
   < 0 for one-way; the type is capped at 255), IPv4 as 4 bytes when the originator's address
   is IPv4-mapped, then SHA-1 and base64 (`community_ids`). */
void cid_flows(const uint8_t *oh, const uint8_t *rh, const uint8_t *proto, const uint16_t *op,
               const uint16_t *rp, int64_t n, const int32_t *cp4, const int32_t *cp6,
               int32_t seed, char *out) {
    static const uint8_t v4pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    for (int64_t i = 0; i < n; i++) {
        uint8_t p = proto[i];
        if (p != 6 && p != 17 && p != 132 && p != 1 && p != 58) continue;
        const uint8_t *o = oh + 16 * i, *r = rh + 16 * i;
        int one_way = 0;
        if (p == 1 || p == 58) {
            int t = op[i] > 255 ? 255 : op[i];
            one_way = (p == 58 ? cp6[t] : cp4[t]) < 0;
        }
        int c = memcmp(o, r, 16);
        int swap = !one_way && (c > 0 || (c == 0 && op[i] > rp[i]));
        const uint8_t *s = swap ? r : o, *d = swap ? o : r;
        uint16_t sp = swap ? rp[i] : op[i], dp = swap ? op[i] : rp[i];
        int len = memcmp(o, v4pre, 12) == 0 ? 4 : 16;
        uint8_t buf[2 + 16 + 16 + 6];
        int w = 0;
        buf[w++] = (uint8_t)((seed >> 8) & 255);
        buf[w++] = (uint8_t)(seed & 255);
        memcpy(buf + w, s + 16 - len, (size_t)len);
        w += len;
        memcpy(buf + w, d + 16 - len, (size_t)len);
        w += len;
        buf[w++] = p;
        buf[w++] = 0;
        buf[w++] = (uint8_t)(sp >> 8);
        buf[w++] = (uint8_t)(sp & 255);
        buf[w++] = (uint8_t)(dp >> 8);
        buf[w++] = (uint8_t)(dp & 255);
        community_ids(buf, 1, w, out + 30 * i);
    }
}

/* The application feed's candidates among n assigned rows, in order: row i (packet pkt[i] <
   npkt of the batch, flow slot[i] < nslots) is one if its packet has payload (cap > 0), is
   not a later fragment (frag <= 1) and its flow has budget (> 0). idx gets the candidates'
   row numbers and rank how many candidates of the same flow came before it in this batch.
   count: per-slot scratch, all zero on entry and again on return. Returns the number of
   candidates, or -1 at an index out of range (count is zero again). */
int64_t app_candidates(int64_t n, const int64_t *pkt, const int64_t *slot, int64_t npkt,
                       const int32_t *cap, const uint8_t *frag, const int32_t *budget,
                       int64_t nslots, int32_t *count, int64_t *idx, int64_t *rank) {
    int64_t k = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t p = pkt[i], s = slot[i];
        if (p < 0 || p >= npkt || s < 0 || s >= nslots) {
            bad = 1;
            break;
        }
        if (cap[p] > 0 && frag[p] <= 1 && budget[s] > 0) {
            idx[k] = i;
            rank[k] = count[s]++;
            k++;
        }
    }
    for (int64_t j = 0; j < k; j++) count[slot[idx[j]]] = 0;
    return bad ? -1 : k;
}

/* Whether each of n rows comes from its flow's originator: the sender is the lower endpoint
   (address bytes, then port) exactly when the flow's originator is (orig_lo[slot[i]], slot <
   nslots). Rows are 16-byte addresses. Returns 0, or -1 at a slot out of range. */
int64_t from_orig(int64_t n, const uint8_t *src, const uint8_t *dst, const uint16_t *sport,
                  const uint16_t *dport, const int64_t *slot, int64_t nslots,
                  const uint8_t *orig_lo, uint8_t *out) {
    for (int64_t i = 0; i < n; i++) {
        int64_t s = slot[i];
        if (s < 0 || s >= nslots) return -1;
        int c = memcmp(src + 16 * i, dst + 16 * i, 16);
        int swapped = c > 0 || (c == 0 && sport[i] > dport[i]);
        out[i] = (uint8_t)((!swapped) == (orig_lo[s] != 0));
    }
    return 0;
}

/* New flows in slots[i] (< nslots) from their first rows rows[i] (< ncols) of the batch's
   columns, as Zeek starts a connection: the originator is the first packet's sender, flipped
   when the first TCP packet is not a pure SYN and comes from a likely server port (not to one,
   or to a lower one without SYN) or a UDP packet comes from a likely server port to an
   unlikely one (ls_tcp, ls_udp: 65536 flags each). The flow's inactivity timeout is tmo[0]
   (TCP), tmo[1] (UDP), tmo[2] (others) or tmo[3] (UDP to or from a DNS port, dns_port).
   Counters start at zero, first_dir at -1, serials at serial0, the TCP state reset. Returns
   0, or -1 at an index out of range (nothing written for that flow or after it). */
int64_t flow_create(int64_t k, const int64_t *rows, int64_t ncols, const int64_t *slots,
                    int64_t nslots, const uint64_t *hkeys, const uint8_t *proto,
                    const uint16_t *sport, const uint16_t *dport, const uint8_t *flags,
                    const uint8_t *src, const uint8_t *dst, const int64_t *ts,
                    const int32_t *vlan, const int32_t *inner_vlan, const uint8_t *ls_tcp,
                    const uint8_t *ls_udp, const uint8_t *dns_port, const int64_t *tmo,
                    int64_t serial0, uint8_t *orig_h, uint8_t *resp_h, uint16_t *orig_p,
                    uint16_t *resp_p, uint8_t *s_proto, uint8_t *flipped, uint8_t *orig_lo,
                    int64_t *timeout, int64_t *first_ts, int64_t *last_ts, int32_t *s_vlan,
                    int32_t *s_inner_vlan, int64_t *pkts, int64_t *ipb, int64_t *pbytes,
                    int8_t *first_dir, uint8_t *live, uint64_t *hkey, int64_t *serial,
                    tcpflow *tcp) {
    for (int64_t i = 0; i < k; i++) {
        int64_t r = rows[i], s = slots[i];
        if (r < 0 || r >= ncols || s < 0 || s >= nslots) return -1;
        uint8_t p = proto[r], fl = flags[r];
        uint16_t sp = sport[r], dp = dport[r];
        int ls_s = p == 6 ? ls_tcp[sp] != 0 : (p == 17 ? ls_udp[sp] != 0 : 0);
        int ls_d = p == 6 ? ls_tcp[dp] != 0 : (p == 17 ? ls_udp[dp] != 0 : 0);
        int flip = 0;
        if (p == 6) {
            int partial = (fl & 2) == 0 || (fl & 16) != 0;
            flip = partial && ls_s && (ls_d ? ((fl & 2) == 0 && sp < dp) : 1);
        } else if (p == 17) {
            flip = ls_s && !ls_d;
        }
        const uint8_t *a = src + 16 * r, *b = dst + 16 * r;
        memcpy(orig_h + 16 * s, flip ? b : a, 16);
        memcpy(resp_h + 16 * s, flip ? a : b, 16);
        orig_p[s] = flip ? dp : sp;
        resp_p[s] = flip ? sp : dp;
        s_proto[s] = p;
        flipped[s] = (uint8_t)flip;
        int c = memcmp(a, b, 16);
        int from_lo = !(c > 0 || (c == 0 && sp > dp));
        orig_lo[s] = (uint8_t)(from_lo != flip);
        int64_t t = p == 6 ? tmo[0] : (p == 17 ? tmo[1] : tmo[2]);
        if (p == 17 && (dns_port[sp] || dns_port[dp])) t = tmo[3];
        timeout[s] = t;
        first_ts[s] = last_ts[s] = ts[r];
        s_vlan[s] = vlan[r];
        s_inner_vlan[s] = inner_vlan[r];
        pkts[2 * s] = pkts[2 * s + 1] = 0;
        ipb[2 * s] = ipb[2 * s + 1] = 0;
        pbytes[2 * s] = pbytes[2 * s + 1] = 0;
        first_dir[s] = -1;
        live[s] = 1;
        hkey[s] = hkeys[i];
        serial[s] = serial0 + i;
        tcp_reset(&tcp[s], flip);
    }
    return 0;
}
