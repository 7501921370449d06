/* Record-header walkers for pcap and pcapng, used by capture/fastpath.py through cffi.
 *
 * Walking record headers is inherently sequential (each header says where the next one is),
 * which numpy cannot express; these loops only read lengths/timestamps and write offsets
 * into caller-provided arrays. They never read outside buf[0:len].
 *
 * status out-parameter: 0 = stopped normally (max_pkts reached or the next record is not
 * complete in buf), 1 = bad record/block length at *consumed (file corrupt from there),
 * 2 = (pcapng) stopped before a block Python must parse (SHB or IDB) at *consumed.
 */
#include <stdint.h>
#include <string.h>

#include "_fastwalk.h"

/* walk_pcap_ts prefetches the buffer this far ahead of the record it reads: each header says
 * where the next one is, so without it a chunk mapped from the page cache (not just copied
 * into the cache by `read`) is walked one memory latency a record (capture/read/mapped.py) */
#define WALK_AHEAD 2048

static inline uint32_t rd32(const uint8_t *p, int sw) {
    uint32_t v;
    memcpy(&v, p, 4);
    return sw ? __builtin_bswap32(v) : v;
}

static inline uint16_t rd16(const uint8_t *p, int sw) {
    uint16_t v;
    memcpy(&v, p, 2);
    return sw ? __builtin_bswap16(v) : v;
}

int64_t walk_pcap(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                  uint32_t caplimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                  uint32_t *sec, uint32_t *frac, int64_t *consumed, int *status) {
    int64_t pos = 0, n = 0;
    *status = 0;
    while (n < max_pkts && pos + 16 <= len) {
        uint32_t cl = rd32(buf + pos + 8, swapped);
        if (cl > caplimit) {
            *status = 1;
            break;
        }
        if (pos + 16 + (int64_t)cl > len)
            break;
        sec[n] = rd32(buf + pos, swapped);
        frac[n] = rd32(buf + pos + 4, swapped);
        caplen[n] = (int32_t)cl;
        uint32_t wl = rd32(buf + pos + 12, swapped);
        wirelen[n] = wl > 0x7fffffffu ? 0x7fffffff : (int32_t)wl;
        off[n] = pos + 16;
        pos += 16 + (int64_t)cl;
        n++;
    }
    *consumed = pos;
    return n;
}

/* walk_pcap from buf[start] and into out-arrays at their start, with what the reader needs
 * made here rather than in numpy: absolute offsets, timestamps in ns (sec * 1e9 + frac * unit;
 * unit 1000 for microsecond files, 1 for nanosecond ones) and the count of fractions >=
 * frac_limit (bad timestamps, kept as they are). Resumable: walking buf[0:len] in steps of
 * growing len (as it is read) finds exactly the records one walk of buf[0:len] finds. */
int64_t walk_pcap_ts(const uint8_t *buf, int64_t start, int64_t len, int swapped,
                     int64_t max_pkts, uint32_t caplimit, int64_t unit, uint32_t frac_limit,
                     int64_t *off, int32_t *caplen, int32_t *wirelen, int64_t *ts,
                     int64_t *bad_ts, int64_t *consumed, int *status) {
    int64_t pos = start, n = 0, bad = 0;
    *status = 0;
    if (start < 0 || start > len) { /* nothing to walk (the caller never asks for this) */
        *consumed = start;
        return 0;
    }
    int64_t pf = pos & ~(int64_t)63; /* the next cache line to prefetch (see WALK_AHEAD) */
    while (n < max_pkts && pos + 16 <= len) {
        const uint8_t *h = buf + pos;
        int64_t want = pos + WALK_AHEAD < len ? pos + WALK_AHEAD : len;
        for (; pf < want; pf += 64)
            __builtin_prefetch(buf + pf);
        uint32_t cl = rd32(h + 8, swapped);
        if (cl > caplimit) {
            *status = 1;
            break;
        }
        if (pos + 16 + (int64_t)cl > len)
            break;
        uint32_t frac = rd32(h + 4, swapped);
        ts[n] = (int64_t)rd32(h, swapped) * 1000000000 + (int64_t)frac * unit;
        bad += frac >= frac_limit;
        caplen[n] = (int32_t)cl;
        uint32_t wl = rd32(h + 12, swapped);
        wirelen[n] = wl > 0x7fffffffu ? 0x7fffffff : (int32_t)wl;
        off[n] = pos + 16;
        pos += 16 + (int64_t)cl;
        n++;
    }
    *bad_ts += bad;
    *consumed = pos;
    return n;
}

int64_t walk_pcapng(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                    uint32_t blocklimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                    uint32_t *iface, uint64_t *ts, int64_t *consumed, int *status,
                    uint32_t *stop_type) {
    int64_t pos = 0, n = 0;
    *status = 0;
    *stop_type = 0;
    while (n < max_pkts && pos + 12 <= len) {
        uint32_t btype = rd32(buf + pos, swapped);
        uint32_t blen = rd32(buf + pos + 4, swapped);
        if (btype == 0x0A0D0D0Au || btype == 1u) {
            *status = 2;
            *stop_type = btype;
            break;
        }
        if (blen < 12 || blen > blocklimit || (blen & 3u) != 0) {
            *status = 1;
            *stop_type = btype;
            break;
        }
        if (pos + (int64_t)blen > len)
            break;
        const uint8_t *b = buf + pos;
        if (btype == 6u || btype == 2u) { /* EPB, obsolete PB */
            if (blen < 32) {
                *status = 1;
                *stop_type = btype;
                break;
            }
            uint32_t cl = rd32(b + 20, swapped);
            uint32_t wl = rd32(b + 24, swapped);
            if (cl > blen - 32) {
                *status = 1;
                *stop_type = btype;
                break;
            }
            if (btype == 6u) {
                iface[n] = rd32(b + 8, swapped);
            } else {
                iface[n] = rd16(b + 8, swapped);
            }
            ts[n] = ((uint64_t)rd32(b + 12, swapped) << 32) | rd32(b + 16, swapped);
            caplen[n] = (int32_t)cl;
            wirelen[n] = wl > 0x7fffffffu ? 0x7fffffff : (int32_t)wl;
            off[n] = pos + 28;
            n++;
        } else if (btype == 3u) { /* SPB: no timestamp, interface 0 */
            if (blen < 16) {
                *status = 1;
                *stop_type = btype;
                break;
            }
            uint32_t wl = rd32(b + 8, swapped);
            uint32_t room = blen - 16;
            uint32_t cl = wl < room ? wl : room;
            iface[n] = 0;
            ts[n] = UINT64_MAX;
            caplen[n] = (int32_t)cl;
            wirelen[n] = wl > 0x7fffffffu ? 0x7fffffff : (int32_t)wl;
            off[n] = pos + 12;
            n++;
        }
        pos += blen; /* other blocks (NRB, ISB, DSB, custom, unknown) are skipped */
    }
    *consumed = pos;
    return n;
}

/* ---- decode_common: the common case of capture.decode in one pass ------------------------
 *
 * For each packet: Ethernet (with at most two 802.1Q/802.1ad tags) or raw IP, then IPv4
 * (not a fragment) or IPv6 (no extension header), then TCP, UDP, ICMP/ICMPv6, SCTP or another
 * protocol that is not a tunnel, every header complete and consistent. Such a packet gets
 * exactly the columns the numpy path (capture/decode.py) would give it; any other packet
 * (other link types, VN-Tag, PPPoE, MPLS, fragments, extension headers, tunnel candidates,
 * truncated or bad headers, a record outside the buffer) is left untouched and its index
 * written to `slow`, for the numpy path. Returns the number of slow packets. Every read is
 * checked against the frame's captured end, which is checked against buflen. */

#define PREFETCH_AHEAD 8

static inline uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int is_vlan(uint32_t et) {
    return et == 0x8100u || et == 0x88A8u || et == 0x9100u || et == 0x9200u;
}

static int is_ipv6_ext(uint32_t nh) {
    return nh == 0 || nh == 43 || nh == 44 || nh == 51 || nh == 60 || nh == 135 || nh == 139 ||
           nh == 140;
}

/* capture/tunnels.py's Teredo test for a UDP payload at poff (pend: its end by the header
 * lengths, cend: the captured end): 1 if the numpy path would decapsulate it. */
static int teredo(const uint8_t *buf, int64_t poff, int64_t pend, int64_t cend, int on_port) {
    if (poff + 40 > cend)
        return 0;
    if (!on_port && (buf[poff] >> 4) != 6 && buf[poff] != 0)
        return 0;
    int64_t p = poff;
    if (be16(buf + p) == 0x0001) /* authentication header */
        p += 13 + (int64_t)buf[p + 2] + (int64_t)buf[p + 3];
    if (p + 2 <= cend && be16(buf + p) == 0x0000) /* origin indication */
        p += 8;
    if (p + 40 > cend || (buf[p] >> 4) != 6 || 40 + (int64_t)be16(buf + p + 4) != pend - p)
        return 0;
    if (on_port)
        return 1;
    for (int a = 8; a <= 24; a += 16)
        if (be16(buf + p + a) == 0x2001u && be16(buf + p + a + 2) == 0)
            return 1;
    return 0;
}

/* One packet; returns 0 if it was decoded (columns written at i), 1 for the numpy path. */
static int decode_one(const uint8_t *buf, int64_t start, int64_t end, uint16_t lt, int64_t i,
                      const struct lbm_cols *c) {
    int64_t l3;
    unsigned hint;
    int32_t vlan = -1, inner = -1;
    if (lt == 1) { /* Ethernet */
        if (start + 14 > end)
            return 1;
        uint32_t et = be16(buf + start + 12);
        int64_t off = start + 14;
        for (int k = 0; k < 2 && is_vlan(et); k++) {
            if (off + 4 > end)
                return 1;
            int32_t tci = (int32_t)(be16(buf + off) & 0xFFFu);
            if (k == 0)
                vlan = tci;
            else
                inner = tci;
            et = be16(buf + off + 2);
            off += 4;
        }
        if (et == 0x0800u)
            hint = 4;
        else if (et == 0x86DDu)
            hint = 6;
        else
            return 1; /* a third tag, VN-Tag, PPPoE, MPLS, ARP, ... */
        l3 = off;
    } else if (lt == 101 || lt == 12 || lt == 14) {
        l3 = start, hint = 0;
    } else if (lt == 228) {
        l3 = start, hint = 4;
    } else if (lt == 229) {
        l3 = start, hint = 6;
    } else {
        return 1;
    }
    if (l3 >= end)
        return 1;
    const uint8_t *ip = buf + l3;
    unsigned ver = ip[0] >> 4;
    if ((ver != 4 && ver != 6) || (hint != 0 && ver != hint))
        return 1;
    int64_t l4, ip_len;
    unsigned proto;
    if (ver == 4) {
        if (l3 + 20 > end)
            return 1;
        int64_t ihl = (int64_t)(ip[0] & 15) * 4;
        if (ihl < 20 || l3 + ihl > end)
            return 1;
        int64_t tot = be16(ip + 2);
        if (tot == 0)
            tot = end - l3; /* segmentation offload */
        if (tot < ihl)
            return 1;
        if (be16(ip + 6) & 0x3FFFu) /* MF or an offset: a fragment */
            return 1;
        proto = ip[9];
        l4 = l3 + ihl;
        ip_len = tot;
    } else {
        if (l3 + 40 > end)
            return 1;
        int64_t plen = be16(ip + 4);
        proto = ip[6];
        if (is_ipv6_ext(proto))
            return 1;
        ip_len = plen == 0 ? end - l3 : 40 + plen; /* 0: jumbogram */
        l4 = l3 + 40;
    }
    if (proto == 47 || proto == 4 || proto == 41) /* GRE, IP in IP: tunnels */
        return 1;
    int64_t ip_end = l3 + ip_len;
    int64_t cend = end < ip_end ? end : ip_end;
    int icmp = proto == 1 || proto == 58;
    int64_t need = proto == 6 ? 20 : proto == 17 ? 8 : icmp ? 4 : proto == 132 ? 12 : 0;
    if (l4 + need > cend)
        return 1;
    const uint8_t *t = buf + l4;
    uint32_t sport = 0, dport = 0;
    int64_t hlen = 0;
    if (icmp) {
        sport = t[0], dport = t[1], hlen = 8;
    } else if (need > 0) {
        sport = be16(t), dport = be16(t + 2);
        hlen = proto == 6 ? (int64_t)(t[12] >> 4) * 4 : proto == 17 ? 8 : 12;
        if (proto == 6 && hlen < 20)
            return 1;
    }
    int64_t poff = l4 + hlen;
    int64_t plen = ip_end - poff;
    if (plen < 0 && !icmp)
        return 1;
    if (plen < 0)
        plen = 0;
    if (proto == 17) { /* VXLAN, Geneve, Teredo (by port or by what the payload looks like) */
        if (dport == 4789 || dport == 6081)
            return 1;
        if (teredo(buf, poff, poff + plen, cend, dport == 3544 || sport == 3544))
            return 1;
    }
    /* decoded: write the columns */
    c->status[i] = 0;
    c->ip_version[i] = (uint8_t)ver;
    c->proto[i] = (uint8_t)proto;
    uint8_t *s = c->src + 16 * i, *d = c->dst + 16 * i;
    if (ver == 4) {
        memset(s, 0, 10);
        memset(d, 0, 10);
        s[10] = s[11] = d[10] = d[11] = 0xFF;
        memcpy(s + 12, ip + 12, 4);
        memcpy(d + 12, ip + 16, 4);
    } else {
        memcpy(s, ip + 8, 16);
        memcpy(d, ip + 24, 16);
    }
    c->sport[i] = (uint16_t)sport;
    c->dport[i] = (uint16_t)dport;
    c->ip_len[i] = (int32_t)ip_len;
    c->l3_off[i] = l3;
    c->vlan[i] = vlan;
    c->inner_vlan[i] = inner;
    if (proto == 6) {
        c->tcp_flags[i] = t[13];
        c->tcp_seq[i] = be32(t + 4);
        c->tcp_ack[i] = be32(t + 8);
    }
    int64_t lim = cend > l4 ? cend : l4;
    c->payload_off[i] = poff < lim ? poff : lim;
    c->payload_len[i] = (int32_t)plen;
    int64_t cap = cend - poff;
    cap = cap < 0 ? 0 : cap > plen ? plen : cap;
    c->payload_cap[i] = (int32_t)cap;
    return 0;
}

int64_t decode_common(const uint8_t *buf, int64_t buflen, int64_t n, const int64_t *frame_off,
                      const int32_t *cap_len, const uint16_t *linktype,
                      const struct lbm_cols *c, int64_t *slow) {
    int64_t ns = 0;
    for (int64_t i = 0; i < n; i++) {
        /* the frames' headers are rarely in the cache: ask for a later frame's now, so the
         * misses overlap (a prefetch never faults; it is asked only inside the buffer) */
        if (i + PREFETCH_AHEAD < n) {
            int64_t ahead = frame_off[i + PREFETCH_AHEAD];
            if (ahead >= 0 && ahead + 64 < buflen) {
                __builtin_prefetch(buf + ahead);
                __builtin_prefetch(buf + ahead + 64);
            }
        }
        int64_t start = frame_off[i];
        int64_t end = start + (int64_t)cap_len[i];
        if (cap_len[i] < 0 || start < 0 || end > buflen ||
            decode_one(buf, start, end, linktype[i], i, c))
            slow[ns++] = i;
    }
    return ns;
}
