"""Reference for bench/milter_cost.py: a no-op milter in one Python thread, no libmilter.

It speaks just enough of the milter protocol (version 6) to negotiate what
sendpost-agent's milter does (DATA answered, headers without reply, end-of-message with
macro ``i``, every other step skipped) and answers ACCEPT. One thread reads each
connection's whole burst of commands with one recv() and writes the replies with one
send(); libmilter instead reads each command with two reads and two polls and hands the
connection between a controller thread and worker threads.

It is a measurement of what a single-threaded protocol layer would cost, not product
code: no timeouts, no inet sockets, no error handling beyond closing a connection.

    python bench/reference/noop_singlethread.py unix:/path/to/socket
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import sys

VERSION = 6
SETSYMLIST = 0x100  # action: the milter sends its own macro lists
# steps skipped: connect, helo, mail, rcpt, body, end-of-header, unknown; headers no-reply
STEPS = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x100 | 0x80
EOM_STAGE = 5
CONTINUE = b"\0\0\0\x01c"
ACCEPT = b"\0\0\0\x01a"
NO_REPLY = frozenset(b"DLAK")  # macros, header (negotiated no-reply), abort, quit-new


def negotiated(payload: bytes) -> bytes:
    _, actions, steps = struct.unpack(">III", payload[:12])
    body = struct.pack(">III", VERSION, actions & SETSYMLIST, steps & STEPS)
    body += struct.pack(">I", EOM_STAGE) + b"i\0"
    return struct.pack(">I", len(body) + 1) + b"O" + body


def replies(buf: bytearray) -> bytes | None:
    """Consume every complete command in buf; None when the MTA said QUIT."""
    out = []
    while len(buf) >= 5:
        size = int.from_bytes(buf[:4], "big")
        if len(buf) < 4 + size:
            break
        cmd = buf[4]
        if cmd == ord("O"):
            out.append(negotiated(bytes(buf[5 : 4 + size])))
        elif cmd == ord("E"):
            out.append(ACCEPT)
        elif cmd == ord("Q"):
            return None
        elif cmd not in NO_REPLY:
            out.append(CONTINUE)
        del buf[: 4 + size]
    return b"".join(out)


def main() -> None:
    path = sys.argv[1].removeprefix("unix:")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytearray] = {}
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                buffers[conn] = bytearray()
                selector.register(conn, selectors.EVENT_READ)
                continue
            data = sock.recv(65536)
            buf = buffers[sock]
            buf += data
            answer = replies(buf) if data else None
            if answer is None:
                selector.unregister(sock)
                del buffers[sock]
                sock.close()
            elif answer:
                sock.sendall(answer)


if __name__ == "__main__":
    main()
