"""Reading a serial port the way every rig reader needs to: bounded, and in bursts."""

from __future__ import annotations

import serial
from serial.urlhandler.protocol_socket import Serial as _SocketSerial

#: Most bytes taken in one read.
BURST = 64 * 1024


def read_burst(port: serial.SerialBase) -> bytes:
    """What has arrived, waiting at most the port's timeout for the first byte, so that a
    burst is handled once rather than byte by byte."""
    data = bytearray(port.read(port.in_waiting or 1))
    if not data:
        return b""
    if isinstance(port, _SocketSerial):
        # socket:// reports at most one byte waiting: take what is there in one read.
        timeout, port.timeout = port.timeout, 0
        try:
            data += port.read(BURST)
        finally:
            port.timeout = timeout
    else:
        while len(data) < BURST and (waiting := port.in_waiting):
            data += port.read(min(waiting, BURST - len(data)))
    return bytes(data)
