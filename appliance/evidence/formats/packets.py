"""Packets records into one pcapng file, `packets/packets.pcapng`, readable by `tshark -r`.

Each `pcapng` record is a whole pcapng stream of its own (Section Header Block, Interface
Description Blocks, Enhanced Packet Blocks: `capture/subjects/pcapng.py`). The output has one SHB;
each
record's IDBs are mapped onto the output's interfaces (identical IDB bodies, i.e. same link type,
snap length and options such as `if_tsresol`, share one), and every block naming an interface
(EPB, ISB, the obsolete Packet Block) is rewritten with the output's id. A Simple Packet Block
(interface implicitly the section's first, no timestamp) stays one when that interface
is the output's first, else becomes an EPB with timestamp 0. Other
blocks (name resolution, custom, decryption secrets) are copied. Link types may mix.

Blocks stream through: only one partial block is ever held. A record cut off mid-block keeps its
whole blocks. A big-endian section (the gateway's writer is little-endian) is not merged but
written as it is to `packets/ID.pcapng`. A record whose framing is not pcapng (bad block length,
no SHB first) stops at that point and is reported damaged.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from appliance.evidence.formats.files import OutFile, WrittenFile, safe_name

SHB = 0x0A0D0D0A
IDB = 0x00000001
PB = 0x00000002
SPB = 0x00000003
ISB = 0x00000005
EPB = 0x00000006
MAGIC = 0x1A2B3C4D
MAX_BLOCK = 16 << 20
PATH = "packets/packets.pcapng"
USERAPPL = b"lbm-gateway evidence export"


def _section_header() -> bytes:
    opt = struct.pack("<HH", 4, len(USERAPPL)) + USERAPPL + b"\0" * (-len(USERAPPL) % 4)
    body = struct.pack("<IHHq", MAGIC, 1, 0, -1) + opt + struct.pack("<HH", 0, 0)
    total = 12 + len(body)
    return struct.pack("<II", SHB, total) + body + struct.pack("<I", total)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PacketsWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.damaged: list[str] = []
        self.packets = 0
        self._out: OutFile | None = None
        self._own: OutFile | None = None  # a big-endian record, written as it is
        self._ifaces: dict[bytes, int] = {}  # IDB body -> output interface id
        self._files: list[WrittenFile] = []
        self._id = ""
        self._buf = bytearray()
        self._map: list[int] = []  # this section's interface ids -> output ids
        self._started = False  # SHB seen in this record
        self._wrote = False
        self._stopped = False

    def _output(self) -> OutFile:
        if self._out is None:
            self._out = OutFile(self.out_dir, PATH)
            self._out.write(_section_header())
        return self._out

    def begin(self, header: dict[str, Any]) -> None:
        self._id = header["id"]
        self._buf.clear()
        self._map, self._started, self._stopped, self._own = [], False, False, None
        self._wrote = False  # a block of this record went into the merged file

    def data(self, chunk: bytes) -> None:
        if self._stopped:
            return
        if self._own is not None:
            self._own.write(chunk)
            return
        self._buf += chunk
        self._drain()

    def _damage(self) -> None:
        self._stopped = True  # the buffer is dropped once no view of it is held (_drain)
        if self._id not in self.damaged:
            self.damaged.append(self._id)

    def _drain(self) -> None:
        buf = self._buf
        view = memoryview(buf)
        pos = 0
        run = 0  # start of a run of blocks copied unchanged (written in one piece)
        try:
            while len(buf) - pos >= 12:
                btype, total = struct.unpack_from("<II", buf, pos)
                if btype == SHB:
                    (magic,) = struct.unpack_from("<I", buf, pos + 8)
                    if magic != MAGIC:  # big-endian section: keep the record as it is
                        self._flush(view[run:pos])
                        self._big_endian(bytes(buf[pos:]))
                        pos = len(buf)
                        run = pos
                        break
                elif not self._started:
                    self._damage()
                    return
                if total < 12 or total % 4 or total > MAX_BLOCK:
                    self._flush(view[run:pos])
                    self._damage()
                    return
                if len(buf) - pos < total:
                    break
                if btype == EPB and self._same_iface(struct.unpack_from("<I", buf, pos + 8)[0]):
                    self.packets += 1  # interface id unchanged: the block is copied as it is
                else:
                    self._flush(view[run:pos])
                    self._block(btype, view[pos + 8 : pos + total - 4])
                    if self._stopped:
                        return
                    run = pos + total
                pos += total
            if not self._stopped:
                self._flush(view[run:pos])
        finally:
            view.release()
        if self._stopped:
            buf.clear()
        else:
            del buf[:pos]

    def _same_iface(self, section_id: int) -> bool:
        return section_id < len(self._map) and self._map[section_id] == section_id

    def _flush(self, blocks: memoryview) -> None:
        if len(blocks):
            self._output().write(blocks)
            self._wrote = True

    def _big_endian(self, rest: bytes) -> None:
        if self._started:  # a second section in the other byte order: not supported
            self._damage()
            return
        self._own = OutFile(self.out_dir, f"packets/{safe_name(self._id)}.pcapng")
        self._own.record_ids.append(self._id)
        self._own.write(rest)

    def _iface(self, section_id: int) -> int | None:
        return self._map[section_id] if section_id < len(self._map) else None

    def _block(self, btype: int, body: memoryview) -> None:
        out = self._output()
        self._wrote = True
        if btype == SHB:
            self._started = True
            self._map = []
            return
        if btype == IDB:
            key = bytes(body)
            oid = self._ifaces.get(key)
            if oid is None:
                oid = self._ifaces[key] = len(self._ifaces)
                out.write(_block(IDB, key))
            self._map.append(oid)
            return
        if btype in (EPB, ISB, PB):
            fmt = "<H" if btype == PB else "<I"
            (sid,) = struct.unpack_from(fmt, body, 0)
            oid = self._iface(sid)
            if oid is None:
                self._damage()
                return
            new = bytearray(body)
            struct.pack_into(fmt, new, 0, oid)
            out.write(_block(btype, bytes(new)))
            self.packets += btype != ISB
            return
        if btype == SPB:
            oid = self._iface(0)
            if oid is None or len(body) < 4:
                self._damage()
                return
            if oid == 0:  # the output's first interface is the section's: keep it as it is
                out.write(_block(SPB, bytes(body)))
                self.packets += 1
                return
            (orig,) = struct.unpack_from("<I", body, 0)
            frame = bytes(body[4 : 4 + min(orig, len(body) - 4)])
            epb = struct.pack("<IIIII", oid, 0, 0, len(frame), orig) + frame
            out.write(_block(EPB, epb + b"\0" * (-len(frame) % 4)))
            self.packets += 1
            return
        out.write(_block(btype, bytes(body)))

    def end(self, complete: bool) -> None:
        if self._own is not None:
            self._files.append(self._own.close())
            self._own = None
        elif self._buf and not self._stopped and complete:
            self._damage()  # bytes left over that are not a whole block
        if self._out is not None and self._wrote:
            self._out.record_ids.append(self._id)
        self._buf.clear()

    def close(self) -> list[WrittenFile]:
        if self._out is not None:
            self._files.append(self._out.close())
            self._out = None
        return self._files
