"""A TCP proxy in front of the S3 test server that fails or holds chosen requests, so fault
drills hit an exact point (this object's read, that mask's write, the input listing) instead
of racing a timer.

Jobs get the gate's address as their `AWS_ENDPOINT_URL`. The gate reads the client's bytes for
HTTP request lines (`PUT /bucket/key HTTP/1.1`); a request whose method and path match a rule
is, depending on the rule:

- `refuse`: the connection is closed before the request reaches the server (what a client
  sees while the endpoint is down), `times` times, then requests pass again;
- `hold`: the request head is forwarded and nothing more (its body, the response) until
  `release()`: a request in flight, for as long as the test needs it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|HEAD|DELETE) (/[^ \r\n]*) HTTP/1\.[01]\r\n")


@dataclass
class Rule:
    method: str
    path: str  # a part of the decoded path (`/bucket/key`, `prefix=key` of a listing)
    action: str  # "refuse" | "hold"
    times: int = 1  # requests it applies to; then it is spent
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


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(1 << 16):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_RDWR)
