"""cffi build script for `capture._tcpstate`: Zeek's per-connection TCP state machine in C.

Per-flow TCP state (endpoint states, sequence space, history letters) has to follow the packets
in order, which numpy cannot express; this small extension walks the TCP packets of a batch once
(about 10 ns a packet) while every counter that does not depend on order stays an array
operation in `capture.flows`. The logic follows Zeek's TCPSessionAdapter / TCP_Endpoint
(`UpdateStateMachine`, `update_history`, `update_last_seq`, `TCP_Endpoint::Size`); events,
timers, reassembly, checksums and window tracking are left out.

Built at install (`cffi_modules` in setup.py) or on first import by `capture.tcpstate`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cffi import FFI

CDEF = """
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
"""

SOURCE = Path(__file__).with_name("_tcpstate_impl.c").read_text()

# The build carries a hash of its own source, so a stale build is never used (tcpstate.py).
SOURCE_HASH = hashlib.sha256((CDEF + SOURCE).encode()).hexdigest()[:16]
CDEF += "const char *tcpstate_hash(void);\n"
SOURCE += f'const char *tcpstate_hash(void) {{ return "{SOURCE_HASH}"; }}\n'

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("capture._tcpstate", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
