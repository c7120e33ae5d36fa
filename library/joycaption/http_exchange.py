"""One bounded HTTP request: a deadline for the whole exchange, a cap on the answer, same-origin redirects only."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3
READ_CHUNK = 64 * 1024


class ExchangeTimeout(Exception):
    """The whole exchange (connect, send, answer) took longer than its deadline."""


class TooLarge(Exception):
    """The answer is larger than the cap."""


class CrossOriginRedirect(Exception):
    """The server redirects to another scheme, host or port; the request (and its credentials) is not sent there."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for `url` (through the environment's HTTP(S)_PROXY unless NO_PROXY says otherwise) and the
    request target to send on it."""
    parts = urllib.parse.urlsplit(url)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    host, port = parts.hostname or "", parts.port
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.netloc):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.scheme == "https":  # CONNECT through the proxy, then TLS with the server itself
            conn = http.client.HTTPSConnection(p.hostname, p.port or 80, timeout=timeout)
            conn.set_tunnel(host, port or 443)
            return conn, target
        return http.client.HTTPConnection(p.hostname, p.port or 80, timeout=timeout), url  # the absolute URL
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(host, port, timeout=timeout), target


def _exchange_once(method: str, url: str, body: bytes | None, headers: dict[str, str], deadline: float,
                   max_bytes: int) -> Answer:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ExchangeTimeout()
    conn, target = _connection(url, remaining)
    expired = threading.Event()

    def hang_up() -> None:  # a server that answers one byte at a time cannot stretch the deadline
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(remaining, hang_up)
    timer.daemon = True
    timer.start()
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_bytes:
            raise TooLarge()
        chunks, total = [], 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExchangeTimeout()
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = resp.read1(READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge()
            chunks.append(chunk)
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(chunks))
    except (OSError, http.client.HTTPException):
        if expired.is_set() or time.monotonic() >= deadline:
            raise ExchangeTimeout() from None
        raise
    finally:
        timer.cancel()
        conn.close()


def exchange(method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float,
             max_bytes: int) -> Answer:
    """Send one request and read its whole answer within `timeout` seconds, following same-origin redirects.

    Raises:
        ExchangeTimeout: the deadline passed (connecting, sending, or reading however slowly the server answers).
        TooLarge: the answer is longer than max_bytes.
        CrossOriginRedirect: a redirect to another origin (never followed: headers such as the API key stay home).
        OSError, http.client.HTTPException: the connection failed.
    """
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        answer = _exchange_once(method, url, body, headers, deadline, max_bytes)
        location = answer.headers.get("location")
        if answer.status not in REDIRECT_STATUS or not location:
            return answer
        target = urllib.parse.urljoin(url, location)
        if origin(target) != origin(url):
            raise CrossOriginRedirect(urllib.parse.urlunsplit(urllib.parse.urlsplit(target)[:2] + ("", "", "")))
        url = target
    raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects")
