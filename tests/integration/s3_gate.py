"""A TCP proxy in front of the S3 test server that fails or holds chosen requests, so fault
drills hit an exact point (this object's read, that mask's write, the input listing) instead
of racing a timer.

Jobs get the gate's address as their `AWS_ENDPOINT_URL`. The gate reads the client's bytes for
HTTP request lines (`PUT /bucket/key HTTP/1.1`); a request whose method and path match a rule
is, depending on the rule:

- `refuse`: the connection is closed before the request reaches the server (what a client
  sees while the endpoint is down), `times` times, then requests pass again;
- `hold`: the request head is forwarded and nothing more (its body, the response) until
  `release()`: a request in flight, for as long as the test needs it;
- `slowdown`: answered by the gate itself with what S3 sends when throttling (503, code
  `SlowDown`), the server never seeing it;
- `cut`: forwarded, and the server's response passed on up to `after` bytes of its body, then
  the connection closed (a body cut mid-transfer);
- `slow`: forwarded after `seconds` (a slow store).

Rules are checked in the order they were added; the first that matches takes the request.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (/[^ \r\n]*) HTTP/1\.[01]\r\n")


@dataclass
class Rule:
    method: str
    path: str  # a part of the decoded path (`/bucket/key`, `prefix=key` of a listing)
    action: str  # "refuse" | "hold" | "slowdown" | "cut" | "slow"
    times: int = 1  # requests it applies to; then it is spent
    after: int = 0  # cut: body bytes passed on before the cut
    seconds: float = 0.0  # slow: the delay
    hits: list = field(default_factory=list)  # the paths it matched, in order

    def matches(self, method: str, path: str) -> bool:
        return len(self.hits) < self.times and method == self.method and self.path in path


class S3Gate:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        self.held = threading.Event()  # a hold rule has caught a request
        self.released = threading.Event()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # --- the test's side ---

    def refuse(self, method: str, path: str, times: int = 1) -> Rule:
        return self._add(Rule(method, path, "refuse", times))

    def hold(self, method: str, path: str) -> Rule:
        self.held.clear()
        self.released.clear()
        return self._add(Rule(method, path, "hold"))

    def slowdown(self, method: str, path: str, times: int = 1) -> Rule:
        return self._add(Rule(method, path, "slowdown", times))

    def cut(self, method: str, path: str, after: int = 100, times: int = 1) -> Rule:
        return self._add(Rule(method, path, "cut", times, after=after))

    def slow(self, method: str, path: str, seconds: float, times: int = 1) -> Rule:
        return self._add(Rule(method, path, "slow", times, seconds=seconds))

    def release(self) -> None:
        self.released.set()

    def reset(self) -> None:
        with self.lock:
            self.rules.clear()
        self.release()

    def close(self) -> None:
        self.closed = True
        self.release()
        self.server.close()

    def _add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    # --- the proxy ---

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _match(self, data: bytes) -> tuple[int, Rule | None]:
        """(where the first request line a rule takes starts, that rule) in `data`."""
        for found in REQUEST_LINE.finditer(data):
            method, path = found.group(1).decode(), unquote(found.group(2).decode())
            with self.lock:
                for rule in self.rules:
                    if rule.matches(method, path):
                        rule.hits.append(path)
                        return found.start(), rule
        return -1, None

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        try:
            while data := client.recv(1 << 16):
                start, rule = self._match(data)
                if rule is None:
                    upstream.sendall(data)
                    continue
                upstream.sendall(data[:start])  # the end of an earlier request on this connection
                if rule.action == "refuse":
                    return
                if rule.action == "slowdown":
                    client.sendall(SLOWDOWN)
                    return  # `Connection: close`: the rest of the request is never read
                if rule.action == "cut":
                    _cut(client, data[start:], self.target, rule.after)
                    return
                if rule.action == "slow":
                    time.sleep(rule.seconds)
                    upstream.sendall(data[start:])
                    continue
                head_end = data.find(b"\r\n\r\n", start)
                upstream.sendall(data[start : head_end + 4 if head_end >= 0 else start])
                self.held.set()
                self.released.wait()
                return  # the held request never completes: the server discards it
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
SLOWDOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(SLOWDOWN_BODY), SLOWDOWN_BODY)
)


def _cut(client: socket.socket, request: bytes, target, after: int) -> None:
    """Send `request` (a whole GET: no body follows) on a connection of its own and pass the
    response back up to `after` bytes past its head; the caller then closes the client."""
    with socket.create_connection(target) as upstream:
        upstream.sendall(request)
        response = b""
        while (head_end := response.find(b"\r\n\r\n")) < 0 or len(response) < head_end + 4 + after:
            chunk = upstream.recv(1 << 16)
            if not chunk:
                break
            response += chunk
        if head_end >= 0:
            client.sendall(response[: head_end + 4 + after])


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_RDWR)
