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
int64_t walk_pcapng(const uint8_t *buf, int64_t len, int swapped, int64_t max_pkts,
                    uint32_t blocklimit, int64_t *off, int32_t *caplen, int32_t *wirelen,
                    uint32_t *iface, uint64_t *ts, int64_t *consumed, int *status,
                    uint32_t *stop_type);

#endif
