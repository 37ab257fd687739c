"""A loopback HTTP receiver for delivery tests: records every request, answers as the test scripts it.

:class:`Receiver` serves HTTP/1.1 with keep-alive from a thread
(``ThreadingHTTPServer``), so it works the same for a daemon in the test's
process and one in a subprocess. ``answer`` decides each response from the
request (the default: 204). :meth:`Receiver.stop` closes the port (a
receiver that is down: connection refused) and :meth:`Receiver.start`
opens it again on the same port. :meth:`Receiver.hold` makes requests wait
until :meth:`Receiver.release`.

:func:`rails_relay` is an answer that enforces Rails Action Mailbox's relay
ingress contract (``ActionMailbox::Ingresses::Relay::InboundEmailsController``
with its ``BaseController``): POST to the relay path, HTTP basic auth as
``actionmailbox`` with the ingress password (401 with a ``Basic`` challenge
otherwise), media type ``message/rfc822`` (415 otherwise), a body (422
without), then 204.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

from waiting import wait_for

__all__ = ["Answer", "Received", "Receiver", "rails_relay", "RELAY_PATH"]

RELAY_PATH = "/rails/action_mailbox/relay/inbound_emails"


class Received(NamedTuple):
    method: str
    path: str
    #: Header names in lower case.
    headers: dict[str, str]
    body: bytes
    at: float


class Answer(NamedTuple):
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class Receiver:
    """See the module docstring."""

    def __init__(self, answer: Callable[[Received], Answer] | None = None) -> None:
        self.answer = answer or (lambda request: Answer(204))
        #: Requests answered, in order.
        self.requests: list[Received] = []
        #: Every request as it arrived, answered yet or not (held ones included).
        self.arrivals: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._released = threading.Event()
        self._released.set()
        self.waiting = 0
        self.port = 0
        #: While stopped: the port kept bound but not listening (connections are refused, and no other
        #: process on this busy machine can take the port meanwhile).
        self._placeholder: socket.socket | None = None

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                   time.monotonic())
                with receiver._lock:
                    receiver.arrivals.append(request)
                    receiver.waiting += 1
                try:
                    receiver._released.wait(60)
                finally:
                    with receiver._lock:
                        receiver.waiting -= 1
                with receiver._lock:
                    receiver.requests.append(request)
                answer = receiver.answer(request)
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                if answer.body:
                    self.wfile.write(answer.body)

            do_PUT = do_GET = do_POST  # recorded and judged like any request

        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: new connections are refused (the port stays ours; :meth:`close` frees it)."""
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._placeholder is None and self.port:
            placeholder = socket.socket()
            placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            placeholder.bind(("127.0.0.1", self.port))
            self._placeholder = placeholder

    def close(self) -> None:
        """Stop and free the port."""
        self.stop()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    def hold(self) -> None:
        """Requests wait (unanswered) until :meth:`release`."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_requests(self, count: int, timeout: float = 30.0) -> list[Received]:
        wait_for(lambda: len(self.received()) >= count, timeout, what=f"{count} request(s) at the receiver")
        return self.received()

    def wait_waiting(self, count: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.waiting >= count, timeout, what=f"{count} request(s) held at the receiver")


def rails_relay(password: str, accepted: list[bytes]) -> Callable[[Received], Answer]:
    """An answer following Rails' relay ingress contract; appends each accepted raw message to *accepted*."""
    expected = "Basic " + base64.b64encode(f"actionmailbox:{password}".encode()).decode()

    def answer(request: Received) -> Answer:
        if request.method != "POST" or request.path != RELAY_PATH:
            return Answer(404)
        if request.headers.get("authorization") != expected:
            return Answer(401, (("www-authenticate", 'Basic realm="Action Mailbox"'),), b"HTTP Basic: Access denied.\n")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "message/rfc822":
            return Answer(415)
        if not request.body:
            return Answer(422)
        accepted.append(request.body)
        return Answer(204)

    return answer
