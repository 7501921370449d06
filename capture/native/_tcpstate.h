/* Declarations of the _tcpstate extension (capture/_tcpstate_impl.c, _dnsscan.c, _cid.c,
 * _flowacct.c),
 * shared by the C sources (which include this file, so the compiler checks the definitions
 * against it) and the cffi declarations: capture/build.py reads this file for its cdef (lines
 * starting with '#' are dropped there, except `#define NAME NUMBER`). The flow struct is
 * declared here once: Python allocates arrays of it through cffi and C walks them. Keep it
 * plain C declarations that cffi's parser accepts. */
#ifndef LBM_TCPSTATE_H
#define LBM_TCPSTATE_H
#include <stdint.h>

#define HIST_MAX 32
typedef struct {
    int64_t start[2], last[2], ack[2];
    uint64_t hist_last_syn[2], hist_last_fin[2], hist_last_rst[2];
    uint32_t fin_cnt[2], rxmt_cnt[2], rxmt_thresh[2];
    uint32_t hist_seen;
    int64_t last_ns;
    uint8_t state[2], prev_state[2], did_close[2], closed;
    uint8_t hist_len;
    char hist[HIST_MAX];
} tcpflow;

void tcp_reset(tcpflow *f, int flipped);
int64_t tcp_process(tcpflow *flows, int64_t n, const int32_t *slot, const uint8_t *is_orig,
                    const uint8_t *flags, const uint32_t *seq, const uint32_t *ack,
                    const int32_t *len, const int64_t *ts, int64_t close_delay_ns);
int64_t tcp_size(const tcpflow *f, int endpoint);
int tcp_conn_state(const tcpflow *f, int64_t orig_size, int64_t resp_size);
void tcp_reset_many(tcpflow *flows, int64_t n, const int64_t *slot, const uint8_t *flipped);
void tcp_summary(const tcpflow *flows, int64_t n, const int64_t *slot, int64_t *orig_size,
                 int64_t *resp_size, int32_t *state, char *hist, int32_t *hist_len);
void app_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
              int32_t *kind, int64_t *a_off, int32_t *a_len, int32_t *ver);
int64_t dns_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
                 int32_t *hdr, uint8_t *qname, int32_t *qname_len, int64_t max_ans,
                 int32_t *ans_type, uint32_t *ans_ttl, int32_t *ans_off, int32_t *ans_len,
                 uint8_t *text, int64_t text_cap);
void community_ids(const uint8_t *rows, int64_t n, int32_t width, char *out);
int cid_sha_ext(int use);
void flow_keys(const uint8_t *src, const uint8_t *dst, const uint16_t *sport,
               const uint16_t *dport, const uint8_t *proto, int64_t n, uint64_t seed,
               uint64_t *out);
int64_t group_keys(const uint64_t *h, int64_t n, int64_t *table, uint64_t mask, uint64_t seed,
                   int64_t *first, int64_t *inv);
int64_t flow_count(int64_t n, const int64_t *slot, const uint8_t *is_orig, const uint8_t *count,
                   const int64_t *ip_len, const int64_t *plen, const int64_t *ts, int64_t nslots,
                   int64_t *pkts, int64_t *ipb, int64_t *pbytes, int64_t *last_ts,
                   int8_t *first_dir);
int64_t tcp_process_rows(tcpflow *flows, int64_t nslots, int64_t n, const int64_t *rows,
                         int64_t nrows, int64_t base, int64_t ncols, const int64_t *slot,
                         const uint8_t *is_orig, const uint8_t *flags, const uint32_t *seq,
                         const uint32_t *ack, const int64_t *plen, const int64_t *ts,
                         int64_t close_delay_ns);
int64_t addr_text(const uint8_t *addrs, int64_t n, int32_t *offsets, char *data, int64_t cap);
int64_t uid_text(const int64_t *r, int64_t n, char *out);
int64_t app_candidates(int64_t n, const int64_t *pkt, const int64_t *slot, int64_t npkt,
                       const int32_t *cap, const uint8_t *frag, const int32_t *budget,
                       int64_t nslots, int32_t *count, int64_t *idx, int64_t *rank);
int64_t from_orig(int64_t n, const uint8_t *src, const uint8_t *dst, const uint16_t *sport,
                  const uint16_t *dport, const int64_t *slot, int64_t nslots,
                  const uint8_t *orig_lo, uint8_t *out);
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
                    tcpflow *tcp);
void cid_flows(const uint8_t *oh, const uint8_t *rh, const uint8_t *proto, const uint16_t *op,
               const uint16_t *rp, int64_t n, const int32_t *cp4, const int32_t *cp6,
               int32_t seed, char *out);

#endif
