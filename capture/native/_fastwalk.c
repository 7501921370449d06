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
