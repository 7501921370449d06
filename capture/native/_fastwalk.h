/* Declarations of capture/_fastwalk.c, shared by the C source (which includes this file, so
 * the compiler checks the definitions against it) and the cffi declarations: capture/build.py
 * reads this file for its cdef (lines starting with '#' are dropped there, except
 * `#define NAME NUMBER`). Keep it plain C declarations that cffi's parser accepts. */
#ifndef LBM_FASTWALK_H
#define LBM_FASTWALK_H
#include <stdint.h>

int64_t walk_pcap(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                  uint32_t caplimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                  uint32_t *sec, uint32_t *frac, int64_t *consumed, int *status);
int64_t walk_pcap_ts(const uint8_t *buf, int64_t start, int64_t len, int swapped,
                     int64_t max_pkts, uint32_t caplimit, int64_t unit, uint32_t frac_limit,
                     int64_t *off, int32_t *caplen, int32_t *wirelen, int64_t *ts,
                     int64_t *bad_ts, int64_t *consumed, int *status);
int64_t walk_pcapng(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                    uint32_t blocklimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                    uint32_t *iface, uint64_t *ts, int64_t *consumed, int *status,
                    uint32_t *stop_type);

/* The columns decode_common writes (capture.batch.PacketBatch; src/dst are n x 16). */
struct lbm_cols {
    uint8_t *status;
    uint8_t *ip_version;
    uint8_t *proto;
    uint8_t *src;
    uint8_t *dst;
    uint16_t *sport;
    uint16_t *dport;
    int32_t *ip_len;
    int32_t *payload_len;
    uint8_t *tcp_flags;
    uint32_t *tcp_seq;
    uint32_t *tcp_ack;
    int64_t *payload_off;
    int32_t *payload_cap;
    int32_t *vlan;
    int32_t *inner_vlan;
    int64_t *l3_off;
};

int64_t decode_common(const uint8_t *buf, int64_t buflen, int64_t n, const int64_t *frame_off,
                      const int32_t *cap_len, const uint16_t *linktype,
                      const struct lbm_cols *c, int64_t *slow);

/* capture/_mapguard.c: read-only file mappings guarded against the file shrinking. */
int lbm_map_guard(void);
void *lbm_map(int fd, int64_t offset, int64_t length, int64_t tag);
int lbm_unmap(void *addr, int64_t length);
int lbm_map_shrunk(int64_t tag);

#endif
