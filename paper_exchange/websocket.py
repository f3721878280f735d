"""A small RFC 6455 websocket server side, standard library only.

Handshake (``Sec-WebSocket-Accept``), masked client frames, fragmented messages
(continuation frames), ping/pong and the close handshake; no extensions (the client's
permessage-deflate offer is declined by not answering it).  ``WebSocket`` wraps the
socket of one upgraded HTTP connection: ``recv()`` returns whole messages, ``send_*``
may be called from another thread (writes are serialised by a lock).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

__all__ = ["WebSocket", "ConnectionClosed", "accept_key", "is_upgrade",
           "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG"]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 4 * 1024 * 1024


class ConnectionClosed(Exception):
    """The peer closed (or the socket failed); ``code`` is the close code if any."""

    def __init__(self, code: int = 1006, reason: str = ""):
        super().__init__(f"websocket closed ({code}) {reason}".strip())
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def is_upgrade(headers) -> bool:
    return (headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in headers.get("Connection", "").lower())


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    head = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", head, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", head, 126, n) + payload
    return struct.pack("!BBQ", head, 127, n) + payload


class WebSocket:
    def __init__(self, rfile, sock: socket.socket):
        self.rfile = rfile
        self.sock = sock
        self._write_lock = threading.Lock()
        self.closed = False
        self.answer_pings = True

    # ---------------------------------------------------------------- reading

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise ConnectionClosed(1006, "connection lost")
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read_exact(2)
        fin, opcode, masked, n = bool(b1 & 0x80), b1 & 0x0F, bool(b2 & 0x80), b2 & 0x7F
        if b1 & 0x70:
            self._fail(1002, "reserved bits set (no extension was negotiated)")
        if n == 126:
            (n,) = struct.unpack("!H", self._read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._read_exact(8))
        if not masked:
            self._fail(1002, "client frames must be masked")
        if n > MAX_MESSAGE:
            self._fail(1009, "message too big")
        mask = self._read_exact(4)
        return fin, opcode, _unmask(self._read_exact(n), mask)

    def _fail(self, code: int, reason: str):
        self.close(code, reason)
        raise ConnectionClosed(code, reason)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self.answer_pings:
                self._send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            self.close(code if code != 1005 else 1000)
            raise ConnectionClosed(code, payload[2:].decode("utf-8", "replace"))

    def recv(self) -> tuple[int, bytes]:
        """The next whole data message as (opcode, payload); answers control frames."""
        opcode, parts = None, []
        while True:
            fin, op, payload = self._read_frame()
            if op >= 0x8:
                self._control(op, payload)
                continue
            if op == OP_CONT and opcode is None or op != OP_CONT and opcode is not None:
                self._fail(1002, "unexpected continuation frame")
            opcode = op if opcode is None else opcode
            parts.append(payload)
            if sum(map(len, parts)) > MAX_MESSAGE:
                self._fail(1009, "message too big")
            if fin:
                return opcode, b"".join(parts)

    # ---------------------------------------------------------------- writing

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        with self._write_lock:
            if self.closed and opcode != OP_CLOSE:
                raise ConnectionClosed(1006, "already closed")
            try:
                self.sock.sendall(_frame(opcode, payload))
            except OSError as exc:
                self.closed = True
                raise ConnectionClosed(1006, str(exc)) from None

    def send_message(self, payload: bytes, binary: bool) -> None:
        self._send_frame(OP_BINARY if binary else OP_TEXT, payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and shut the socket's write side."""
        if self.closed:
            return
        try:
            self._send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:120])
        except ConnectionClosed:
            pass
        self.closed = True

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure)."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
