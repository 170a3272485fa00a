"""Real loopback peers for the notification channels: an MLLP listener and an HTTP receiver.

Both run in threads on 127.0.0.1 with an OS-chosen port; their behaviour is switched while they
run (ACK AA / NACK AE / reject as malformed / drop / never answer; HTTP status, or an answer too
late). They record what they received, raw, so tests and benchmarks check what went over the wire.
Used as context managers (``with mllp_listener() as peer``) by tests/notify's fixtures, the triage
tests and ``scripts/bench_triage.py``.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hl7

SB, EB = b"\x0b", b"\x1c\x0d"


# --- MLLP ------------------------------------------------------------------------------------


@dataclass
class MllpPeer:
    """An MLLP listener; ``mode`` picks its answer to the next messages."""

    host: str
    port: int
    mode: str = "aa"  # aa | ae | ar-malformed | ar-malformed-v23 | ar-internal | drop | silent | wrong-id | garbage
    received: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"mllp://{self.host}:{self.port}"

    def ack(self, message: str) -> bytes | None:
        control = str(hl7.parse(message).segment("MSH")[10])
        header = f"MSH|^~\\&|RIS|HOSP|NEURORADIX||20261207224100||ACK^R01^ACK|ACK{len(self.received)}|P|2.5.1"
        if self.mode == "aa":
            return f"{header}\rMSA|AA|{control}\r".encode()
        if self.mode == "wrong-id":
            return f"{header}\rMSA|AA|SOMEONE-ELSE\r".encode()
        if self.mode == "ae":
            return f"{header}\rMSA|AE|{control}|database busy\rERR|||206^Application record locked^HL70357|E\r".encode()
        if self.mode == "ar-malformed":
            return (
                f"{header}\rMSA|AR|{control}\r"
                "ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 needs an assigning authority\r"
            ).encode()
        if self.mode == "ar-malformed-v23":
            return f"{header}\rMSA|AR|{control}\rERR|OBX^4^2^102&Data type error&HL70357\r".encode()
        if self.mode == "ar-internal":
            return f"{header}\rMSA|AR|{control}\rERR|||207^Application internal error^HL70357|E\r".encode()
        if self.mode == "garbage":
            return b"this is not HL7"
        return None


def _read_frame(request: Any) -> bytes | None:
    buffer = b""
    while EB not in buffer:
        chunk = request.recv(4096)
        if not chunk:
            return None
        buffer += chunk
    return buffer[buffer.index(SB) + 1 : buffer.index(EB)]


@contextlib.contextmanager
def _serving(server: Any, stop: threading.Event) -> Iterator[None]:
    """Serve ``server`` in a daemon thread; on exit release waiting handlers, shut down and close it."""
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def mllp_listener() -> Iterator[MllpPeer]:
    peer_box: list[MllpPeer] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            peer = peer_box[0]
            while True:
                frame = _read_frame(self.request)
                if frame is None:
                    return
                message = frame.decode("utf-8")
                peer.received.append(message)
                if peer.mode == "drop":
                    return  # close without an answer
                if peer.mode == "silent":
                    peer.stop.wait(30)  # hold the connection open, never answer
                    return
                answer = peer.ack(message)
                assert answer is not None
                # Answer in two pieces: the client must read until the trailer, not take one recv().
                data = SB + answer + EB
                self.request.sendall(data[:7])
                self.request.sendall(data[7:])

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    peer = MllpPeer("127.0.0.1", server.server_address[1])
    peer_box.append(peer)
    with _serving(server, peer.stop):
        yield peer


# --- HTTP ------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpPeer:
    """An HTTP receiver; each POST takes the next answer from ``answers`` (an int status or "slow")."""

    host: str
    port: int
    answers: list[Any] = field(default_factory=list)
    default: Any = 200
    received: list[Received] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.contextmanager
def http_receiver() -> Iterator[HttpPeer]:
    peer_box: list[HttpPeer] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            peer = peer_box[0]
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            peer.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            answer = peer.answers.pop(0) if peer.answers else peer.default
            if answer == "slow":
                peer.stop.wait(5)  # longer than the client's timeout
                answer = 200
            payload = b'{"resourceType":"OperationOutcome"}' if answer >= 400 else b"{}"
            try:
                self.send_response(answer)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the "slow" case)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    peer = HttpPeer("127.0.0.1", server.server_address[1])
    peer_box.append(peer)
    with _serving(server, peer.stop):
        yield peer


def free_closed_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
