/* Zeek's per-connection TCP state machine and the application-head fast path for
   capture/flows.py and capture/appscan.py; built by capture/build.py (cffi). */

#include <stdint.h>
#include <string.h>
#include <ctype.h>

#include "_tcpstate.h" /* tcpflow, HIST_MAX and the exported functions */

enum { INACTIVE = 0, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET };
enum { F_FIN = 1, F_SYN = 2, F_RST = 4, F_ACK = 16 };
enum { H_SYN = 1, H_SYNACK = 2, H_ACK = 4, H_DATA = 8, H_FIN = 16, H_RST = 32,
       H_FINRST = 64, H_MULTI = 128 };
#define TOO_LARGE 1048576

static void add_hist(tcpflow *f, int ep, char code) {
    if (f->hist_len >= HIST_MAX - 1) return;
    f->hist[f->hist_len++] = ep == 0 ? code : (char)tolower(code);
}

/* Zeek's Connection::CheckHistory: add the letter the first time; true if seen before. */
static int check_hist(tcpflow *f, int ep, uint32_t mask, char code) {
    if (ep) mask <<= 16;
    if ((f->hist_seen & mask) == 0) {
        f->hist_seen |= mask;
        add_hist(f, ep, code);
        return 0;
    }
    return 1;
}

static void set_state(tcpflow *f, int ep, int s) {
    if (f->state[ep] != s) { f->prev_state[ep] = f->state[ep]; f->state[ep] = (uint8_t)s; }
}

static int64_t unwrap(uint32_t x, int64_t ref) {
    return ref + (int32_t)(x - (uint32_t)ref);
}

void tcp_reset(tcpflow *f, int flipped) {
    memset(f, 0, sizeof(*f));
    f->rxmt_thresh[0] = f->rxmt_thresh[1] = 1;
    if (flipped) f->hist[f->hist_len++] = '^';
}

static void init_seq(tcpflow *f, int ep, int64_t s, int64_t last) {
    f->start[ep] = s; f->ack[ep] = s; f->last[ep] = last;
}

static void one(tcpflow *f, int ep, uint8_t fl, uint32_t seq, uint32_t ack, int32_t len) {
    int pe = 1 - ep;
    int do_close = 0;
    int syn = fl & F_SYN, fin = fl & F_FIN, rst = fl & F_RST, ackf = fl & F_ACK;
    int32_t seg = len + (syn ? 1 : 0) + (fin ? 1 : 0);
    if (rst) seg -= len;

    /* init_endpoint */
    switch (f->state[ep]) {
    case INACTIVE:
        if (syn) init_seq(f, ep, (int64_t)seq, (int64_t)seq + seg);
        else init_seq(f, ep, (int64_t)seq - 1, (int64_t)seq);
        break;
    case SYN_SENT: case SYN_ACK_SENT:
        if (syn && seq != (uint32_t)f->start[ep]) init_seq(f, ep, seq, (int64_t)seq + seg);
        break;
    case ESTABLISHED: case PARTIAL:
        if (syn) init_seq(f, ep, seq, (int64_t)seq + seg);
        break;
    case RESET:
        if (syn && f->prev_state[ep] == INACTIVE) init_seq(f, ep, seq, (int64_t)seq + seg);
        break;
    default: break;
    }
    uint64_t rel_seq = (uint64_t)(unwrap(seq, f->last[ep]) - f->start[ep]);

    /* update_history */
    int bits = (syn ? 1 : 0) + (fin ? 1 : 0) + (rst ? 1 : 0);
    if (bits > 1) {
        if (fin && rst) check_hist(f, ep, H_FINRST, 'I');
        else check_hist(f, ep, H_MULTI, 'Q');
    } else if (bits == 1) {
        if (syn) {
            char code = ackf ? 'H' : 'S';
            if (check_hist(f, ep, ackf ? H_SYNACK : H_SYN, code) && rel_seq != f->hist_last_syn[ep])
                add_hist(f, ep, code);
            f->hist_last_syn[ep] = rel_seq;
        }
        if (fin) {
            if (check_hist(f, ep, H_FIN, 'F') && rel_seq + (uint64_t)len != f->hist_last_fin[ep])
                add_hist(f, ep, 'F');
            f->hist_last_fin[ep] = rel_seq + (uint64_t)len;
        }
        if (rst) {
            if (check_hist(f, ep, H_RST, 'R') && rel_seq != f->hist_last_rst[ep])
                add_hist(f, ep, 'R');
            f->hist_last_rst[ep] = rel_seq;
        }
    } else {
        if (len) check_hist(f, ep, H_DATA, 'D');
        else if (ackf) check_hist(f, ep, H_ACK, 'A');
    }
    if (fin) f->fin_cnt[ep]++;

    /* ack of the peer's sequence space */
    if (ackf) {
        if (f->state[pe] == INACTIVE) {
            int64_t a = (int64_t)ack - 1;
            init_seq(f, pe, a, a);
        } else if (!rst) {
            int64_t full = unwrap(ack, f->ack[pe]);
            if (!(ack == 0 && full - f->ack[pe] > TOO_LARGE) && full > f->ack[pe])
                f->ack[pe] = full;
        }
    }

    /* update_last_seq */
    {
        int64_t full = unwrap(seq + (uint32_t)seg, f->last[ep]);
        int64_t delta = full - f->last[ep];
        if ((syn || rst) && (delta > TOO_LARGE || delta < -TOO_LARGE)) {
        } else if (fin && f->last[ep] == f->start[ep] + 1) {
            f->last[ep] = full;
        } else if (f->state[ep] == RESET) {
        } else if (delta > 0) {
            f->last[ep] = full;
        } else if (len > 0) {
            /* DidRxmit: scaled history entry 'T' at 1, 10, 100, ... */
            if (++f->rxmt_cnt[ep] == f->rxmt_thresh[ep]) {
                add_hist(f, ep, 'T');
                f->rxmt_thresh[ep] *= 10;
            }
        }
    }

    /* UpdateStateMachine */
    switch (f->state[ep]) {
    case INACTIVE:
        if (syn) {
            if (ep == 0) set_state(f, ep, ackf ? SYN_ACK_SENT : SYN_SENT);
            else {
                if (f->state[pe] == SYN_SENT) set_state(f, pe, ESTABLISHED);
                set_state(f, ep, ESTABLISHED);
            }
        }
        if (fin) { set_state(f, ep, CLOSED); do_close = 1; }
        if (rst) { set_state(f, ep, RESET); do_close = 1; }
        if (f->state[ep] == INACTIVE) {
            if (ep == 1 && len == 0 && f->state[0] == SYN_SENT) {
                /* eccentric ack of an initial SYN: not a partial connection */
            } else if (ackf && f->state[pe] == ESTABLISHED) {
                set_state(f, ep, ESTABLISHED);
            } else {
                set_state(f, ep, PARTIAL);
            }
        }
        break;
    case SYN_SENT: case SYN_ACK_SENT:
        if (fin) { set_state(f, ep, CLOSED); do_close = 1; }
        if (rst) { set_state(f, ep, RESET); do_close = 1; }
        break;
    case ESTABLISHED: case PARTIAL:
        if (syn && f->state[ep] == PARTIAL && f->state[pe] == INACTIVE && !ackf)
            set_state(f, ep, SYN_SENT);
        if (fin && !rst) {
            set_state(f, ep, CLOSED);
            if (f->state[pe] == RESET && f->prev_state[pe] == CLOSED) set_state(f, pe, CLOSED);
            do_close = 1;
        }
        if (rst) { set_state(f, ep, RESET); do_close = 1; }
        break;
    case CLOSED:
        if (rst && f->state[pe] != CLOSED) {
            set_state(f, ep, RESET);
            if (!f->did_close[ep]) do_close = 1;
        }
        break;
    default: break;
    }

    /* ConnectionClosed: once closed for good, Zeek deletes the connection tcp_close_delay
       after its last packet; a later packet starts a new connection. */
    if (do_close && !f->did_close[ep]) {
        f->did_close[ep] = 1;
        if (f->state[ep] == RESET || f->did_close[pe] || f->state[pe] == INACTIVE) f->closed = 1;
    }
}

/* Process n packets in order. Stops before a pure SYN on a connection that has been closed
   or reset (Zeek's connection reuse: that SYN starts a new connection) and returns its index;
   or a packet more than close_delay_ns after the last packet of a connection closed for good;
   returns -1 when all packets were processed. */
int64_t tcp_process(tcpflow *flows, int64_t n, const int32_t *slot, const uint8_t *is_orig,
                    const uint8_t *flags, const uint32_t *seq, const uint32_t *ack,
                    const int32_t *len, const int64_t *ts, int64_t close_delay_ns) {
    for (int64_t i = 0; i < n; i++) {
        tcpflow *f = &flows[slot[i]];
        if (f->closed && ts[i] - f->last_ns > close_delay_ns) return i;
        f->last_ns = ts[i];
        if ((flags[i] & (F_SYN | F_ACK)) == F_SYN) {
            int a = f->state[0], b = f->state[1];
            if (a == CLOSED || a == RESET || b == CLOSED || b == RESET) {
                int ep = is_orig[i] ? 0 : 1;
                if (f->state[ep] == INACTIVE || seq[i] != (uint32_t)f->start[ep]) return i;
            }
        }
        one(f, is_orig[i] ? 0 : 1, flags[i], seq[i], ack[i], len[i]);
    }
    return -1;
}

int64_t tcp_size(const tcpflow *f, int ep) {
    int pe = 1 - ep;
    int no_data_acked = f->ack[ep] == f->start[ep] || f->ack[ep] == f->start[ep] + 1;
    if (f->prev_state[ep] == SYN_SENT && f->state[ep] == RESET && f->state[pe] == INACTIVE
        && !no_data_acked)
        return 0;
    if (f->state[ep] == INACTIVE) return 0;
    int64_t top = f->last[ep] > f->ack[ep] ? f->last[ep] : f->ack[ep];
    int64_t size = top - f->start[ep];
    if (size <= 0) return 0;
    size--;
    if (f->fin_cnt[ep] > 0 && size > 0) size--;
    return size;
}

/* Zeek's conn_state() (base/protocols/conn/main.zeek) for TCP, as an index into
   S0 S1 SF REJ S2 S3 RSTO RSTR RSTOS0 RSTRH SH SHR OTH. */
int tcp_conn_state(const tcpflow *f, int64_t orig_size, int64_t resp_size) {
    int os = f->state[0], rs = f->state[1];
    int o_inactive = os == INACTIVE || os == PARTIAL;
    int r_inactive = rs == INACTIVE || rs == PARTIAL;
    if (rs == RESET) {
        if (os == SYN_SENT || os == SYN_ACK_SENT
            || (os == RESET && orig_size == 0 && resp_size == 0))
            return 3;
        return o_inactive ? 9 : 7;
    }
    if (os == RESET) {
        if (!r_inactive) return 6;
        /* history matches /^\^?S[^HAFGIQTWRr]*R/ */
        const char *h = f->hist;
        int i = 0, n = f->hist_len;
        if (i < n && h[i] == '^') i++;
        if (i < n && h[i] == 'S') {
            for (i++; i < n; i++) {
                if (h[i] == 'R') return i == n - 1 ? 8 : 12;
                if (strchr("HAFGIQTWRr", h[i])) break;
            }
        }
        return 12;
    }
    if (rs == CLOSED && os == CLOSED) return 2;
    if (os == CLOSED) return r_inactive ? 10 : 4;
    if (rs == CLOSED) return o_inactive ? 11 : 5;
    if (os == SYN_SENT && rs == INACTIVE) return 0;
    if (os == ESTABLISHED && rs == ESTABLISHED) return 1;
    return 12;
}


void tcp_reset_many(tcpflow *flows, int64_t n, const int64_t *slot, const uint8_t *flipped) {
    for (int64_t i = 0; i < n; i++) tcp_reset(&flows[slot[i]], flipped[i]);
}

/* Sizes, conn_state index and history of n flows (history: HIST_MAX bytes per flow). */
void tcp_summary(const tcpflow *flows, int64_t n, const int64_t *slot, int64_t *orig_size,
                 int64_t *resp_size, int32_t *state, char *hist, int32_t *hist_len) {
    for (int64_t i = 0; i < n; i++) {
        const tcpflow *f = &flows[slot[i]];
        orig_size[i] = tcp_size(f, 0);
        resp_size[i] = tcp_size(f, 1);
        state[i] = tcp_conn_state(f, orig_size[i], resp_size[i]);
        memcpy(hist + i * HIST_MAX, f->hist, HIST_MAX);
        hist_len[i] = f->hist_len;
    }
}


/* Fast path for application heads that fit in one packet (capture/appmeta.py has the full,
   multi-segment logic). kind: 0 other, 1 complete TLS ClientHello (a_off/a_len: SNI, a_len 0
   if none), 2 complete TLS ServerHello (ver: negotiated version), 3 complete HTTP request head
   (a_off/a_len: Host value, ver: method length), 4 incomplete TLS or HTTP head. */
static int rd16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

static const char *METHODS[] = {"GET ", "POST ", "HEAD ", "PUT ", "DELETE ", "OPTIONS ",
                                "PATCH ", "CONNECT ", "TRACE ", 0};

static void scan_tls(const uint8_t *p, int32_t n, int32_t *kind, int64_t *a_off, int32_t *a_len,
                     int32_t *ver) {
    if (n < 9) { *kind = 4; return; }
    int rlen = rd16(p + 3);
    int htype = p[5];
    int hlen = (p[6] << 16) | (p[7] << 8) | p[8];
    if (htype != 1 && htype != 2) return;
    if (rlen < 4 + hlen || 5 + rlen > n) { *kind = 4; return; }
    const uint8_t *b = p + 9, *end = p + 9 + hlen;
    if (b + 35 > end) return;
    int version = rd16(b);
    b += 34;
    b += 1 + b[0];                      /* session id */
    if (htype == 1) {
        if (b + 2 > end) return;
        b += 2 + rd16(b);               /* cipher suites */
        if (b + 1 > end) return;
        b += 1 + b[0];                  /* compression methods */
    } else {
        b += 3;                         /* cipher suite, compression */
    }
    *kind = htype == 1 ? 1 : 2;
    *a_len = 0;
    *ver = version;
    if (b + 2 > end) return;
    const uint8_t *xend = b + 2 + rd16(b);
    if (xend > end) xend = end;
    b += 2;
    while (b + 4 <= xend) {
        int et = rd16(b), el = rd16(b + 2);
        const uint8_t *ed = b + 4;
        if (ed + el > xend) break;
        if (htype == 1 && et == 0 && el >= 5 && ed[2] == 0) {
            int nl = rd16(ed + 3);
            if (5 + nl <= el) { *a_off = (ed + 5) - p; *a_len = nl; }
        }
        if (htype == 2 && et == 43 && el >= 2) *ver = rd16(ed);
        b = ed + el;
    }
}

static void scan_http(const uint8_t *p, int32_t n, int32_t *kind, int64_t *a_off,
                      int32_t *a_len, int32_t *ver) {
    int m = -1;
    for (int i = 0; METHODS[i]; i++) {
        int l = (int)strlen(METHODS[i]);
        if (n >= l && memcmp(p, METHODS[i], l) == 0) { m = l - 1; break; }
    }
    if (m < 0) return;
    int endh = -1;
    for (int i = 0; i + 3 < n; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n') {
            endh = i; break;
        }
    if (endh < 0) { *kind = 4; return; }
    *kind = 3;
    *ver = m;
    *a_len = -1;
    for (int i = 0; i < endh; i++) {
        if (p[i] != '\n') continue;
        const uint8_t *l = p + i + 1;
        if (l + 5 <= p + endh && (l[0] | 32) == 'h' && (l[1] | 32) == 'o' && (l[2] | 32) == 's'
            && (l[3] | 32) == 't' && l[4] == ':') {
            const uint8_t *v = l + 5, *e = v;
            while (e < p + endh && *e != '\r') e++;
            while (v < e && (*v == ' ' || *v == '\t')) v++;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
            *a_off = v - p;
            *a_len = (int32_t)(e - v);
            return;
        }
    }
}

void app_scan(const uint8_t *buf, int64_t n, const int64_t *off, const int32_t *len,
              int32_t *kind, int64_t *a_off, int32_t *a_len, int32_t *ver) {
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = buf + off[i];
        int32_t l = len[i];
        kind[i] = 0; a_off[i] = 0; a_len[i] = 0; ver[i] = 0;
        if (l <= 0) continue;
        if (p[0] == 0x16 && l >= 2 && p[1] == 3) {
            scan_tls(p, l, &kind[i], &a_off[i], &a_len[i], &ver[i]);
            if (kind[i] != 0 && kind[i] != 4) a_off[i] += off[i];
        } else if (p[0] >= 'A' && p[0] <= 'Z') {
            scan_http(p, l, &kind[i], &a_off[i], &a_len[i], &ver[i]);
            if (kind[i] == 3) a_off[i] += off[i];
        }
    }
}
