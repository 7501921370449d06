"""The capture path's C code and its one build scheme (cffi, out-of-line API mode).

In: the C sources here, each including the header that declares what C and Python share
(`_fastwalk.h`: pcap/pcapng record walking; `_tcpstate.h`: Zeek's TCP state machine, the
application-head scan, the DNS scan, Community IDs).
Out: two extension modules, built hardened into a cache directory keyed by a hash of the
sources and flags (`build`), loaded by `capture.read.walk` (which has a pure-Python fallback)
and `capture.flow.tcpstate` (which has none).

Install step: ``python -m capture.native.build [--dest DIR]`` (`make venv`, `make asan`).
The C code parses hostile packets: every read is bounds-checked, `make asan` runs the capture
tests with AddressSanitizer and UndefinedBehaviorSanitizer builds.

This package's ``__init__`` imports nothing, so ``python -m capture.native.build`` runs the
build module once; callers import `capture.native.build` itself.
"""

__all__: list[str] = []
