"""CRC-16/CCITT-FALSE, the check every node frame ends with.

poly 0x1021, init 0xFFFF, no reflection, no final xor; ``crc16(b"123456789") == 0x29B1``.
``binascii.crc_hqx`` is exactly this CRC when seeded with 0xFFFF, and runs in C, which
matters because every BLOCK frame is checked on both sides.
"""

from __future__ import annotations

from binascii import crc_hqx

CRC_INIT = 0xFFFF
CHECK_VALUE = 0x29B1


def crc16(data: bytes | bytearray | memoryview, crc: int = CRC_INIT) -> int:
    """The CRC of ``data``; pass a previous result as ``crc`` to continue over more data."""
    return crc_hqx(data, crc)


def check_frame(frame: bytes | bytearray | memoryview) -> bool:
    """True if ``frame`` ends with the big-endian CRC of the bytes before it.

    A non-reflected CRC without final xor leaves a zero remainder over data + CRC, so the
    whole frame is checked in one pass, without slicing off the tail.
    """
    return len(frame) >= 2 and crc_hqx(frame, CRC_INIT) == 0
