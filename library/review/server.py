"""A local web server for the caption review page: serves it, and saves caption edits to the dataset's sidecars."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import mimetypes
import secrets
import signal
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from library.review.report import ReportOptions, collect_report, dataset_root, render_page
from library.errors import FatalError
from library.outputs import json_text
from library.review.edits import NO_BASE, CaptionStore, EditRefused
from library.files.sidecars import SidecarLayout
from library.review.thumbnails import NAME_PATTERN, absolute

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Captionkit-Token"
MAX_BODY = 32 * 1024 * 1024  # a tag edit over 200,000 selected images fits
_LOOPBACK_NAMES = ("localhost",)


def _host_and_port(value: str) -> tuple[str, str]:
    """'127.0.0.1:8000' -> ('127.0.0.1', '8000'); '[::1]:8000' -> ('::1', '8000')."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.lstrip(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class ReviewServer(ThreadingHTTPServer):
    """Serves one dataset's review page on host:port and writes only the sidecars of that dataset's images.

    Every request must name this server by IP or 'localhost' in its Host header (a web page that points its
    own domain name at 127.0.0.1 is refused), and every write must carry the random token embedded in the
    served page and, when the browser sends one, an Origin equal to the server's own.

    Args:
        root: the dataset folder (or one image).
        options: captions and page settings (as for the static report).
        thumbs_dir: the thumbnail cache folder.
        host, port: where to listen; port 0 picks a free port (see `url`).
        allow_hosts: extra Host names to accept, e.g. the address of a reverse proxy in front of the server.
    """

    daemon_threads = False  # server_close() waits for a save in progress: stopping never loses an edit
    block_on_close = True
    request_queue_size = 128  # bursts of concurrent saves wait in the listen queue instead of being reset

    def __init__(self, root, options: ReportOptions, thumbs_dir: Path, host: str = "127.0.0.1", port: int = 0,
                 allow_hosts=()):
        self.root = root
        self.allow_hosts = {h.strip().lower() for h in allow_hosts if h.strip()}
        self.options = options
        self.thumbs_dir = Path(thumbs_dir)
        self.token = secrets.token_urlsafe(32)
        layout = SidecarLayout(options.caption_extension, dataset_root(root),
                               absolute(options.output_dir) if options.output_dir else None)
        self.store = CaptionStore(root, layout, options.recursive, options.separator)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), ReviewHandler)
        except OSError as exc:
            raise FatalError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); try another --port") from None
        self.port = self.server_address[1]
        self.bind_host = host
        self._connections: dict[socket.socket, bool] = {}  # open connections -> a save is in progress
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, saving: bool | None) -> None:
        """Note an open connection (saving: whether it is writing now); None forgets it."""
        with self._connections_lock:
            if saving is None:
                self._connections.pop(connection, None)
            else:
                self._connections[connection] = saving

    def server_close(self) -> None:
        """Stop listening, hang up on clients that are only sending or waiting, and wait for saves in progress."""
        socketserver.TCPServer.server_close(self)  # ThreadingMixIn's would first wait for every client
        with self._connections_lock:
            idle = [conn for conn, saving in self._connections.items() if not saving]
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._threads.join()

    @property
    def loopback(self) -> bool:
        """True when only this computer can connect (127.0.0.1, ::1, localhost)."""
        host = self.bind_host.strip("[]")
        return host in _LOOPBACK_NAMES or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)

    @property
    def url(self) -> str:
        host = self.bind_host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def host_allowed(self, host_header: str | None) -> bool:
        """True for Host: <IP literal or localhost>:<our port>; DNS names could be rebound to us by any site."""
        if not host_header:
            return False
        host, port = _host_and_port(host_header)
        if host in self.allow_hosts:
            return True
        if port != str(self.port):
            return False
        if host in _LOOPBACK_NAMES:
            return True
        if not _is_ip(host):
            return False
        return not self.loopback or ipaddress.ip_address(host).is_loopback  # bound to loopback: no other address

    def origin_allowed(self, origin: str | None, host_header: str) -> bool:
        """True when the browser sent no Origin (not a browser) or the Origin is this server itself."""
        if origin is None:
            return True
        parts = urlsplit(origin.strip().lower())
        return parts.scheme in ("http", "https") and parts.netloc == host_header.strip().lower()

    def page(self) -> bytes:
        """The review page with the dataset as it is on disk now, the write token and edit controls."""
        self.store.refresh()
        data = collect_report(self.root, self.options, self.thumbs_dir, confinement=self.store.confinement)
        data.update(mode="serve", token=self.token, editable=True, image_base="image/", thumb_base="thumbs/")
        return render_page(data).encode("utf-8")


class ReviewHandler(BaseHTTPRequestHandler):
    """GET /, /thumbs/NAME, /image/ID; POST /api/caption and /api/tags (JSON in, JSON out)."""

    server: ReviewServer
    server_version = "captionkit-review"
    timeout = 60  # a stalled client cannot hold a thread (and Ctrl-C) forever

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, False)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, None)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json_text.dumps(payload).encode("utf-8"), "application/json; charset=utf-8",
                   {"Cache-Control": "no-store"})

    def _error(self, status: int, message: str) -> None:
        logger.warning("refused %s %s: %s", self.command, self.path.split("?")[0], message)
        self._json(status, {"error": message})

    def _file(self, path: Path, cache: str) -> None:
        try:
            body = path.read_bytes()
        except OSError:
            self._error(404, "file not found")
            return
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, body, ctype, {"Cache-Control": cache})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self.server.host_allowed(self.headers.get("Host")):
            self._error(403, "unknown Host header (open the address the server printed)")
            return
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page(), "text/html; charset=utf-8",
                       {"Cache-Control": "no-store", "Content-Security-Policy":
                        "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                        "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"})
        elif path.startswith("/thumbs/"):
            name = path[len("/thumbs/"):]
            if not NAME_PATTERN.match(name):
                self._error(404, "no such thumbnail")
                return
            self._file(self.server.thumbs_dir / name, "max-age=86400")  # names change when images change
        elif path.startswith("/image/"):
            try:
                image = self.server.store.image_file(unquote(path[len("/image/"):], errors="surrogateescape"))
            except EditRefused as exc:
                self._error(exc.status, str(exc))
                return
            self._file(image, "no-cache")
        else:
            self._error(404, "not found")

    do_HEAD = do_GET

    def _body(self) -> dict | None:
        """The request's JSON object after the Host, Origin, token and content checks; None when refused."""
        host = self.headers.get("Host")
        if not self.server.host_allowed(host):
            self._error(403, "unknown Host header")
            return None
        if not self.server.origin_allowed(self.headers.get("Origin"), host):
            self._error(403, "cross-origin request refused")
            return None
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            self._error(403, "cross-site request refused")
            return None
        token = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.server.token.encode()):
            self._error(403, "missing or wrong token (reload the page)")
            return None
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._error(415, "send JSON (Content-Type: application/json)")
            return None
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._error(411, "Content-Length required")
            return None
        if length < 0 or length > MAX_BODY:
            self._error(413, "request too large")
            return None
        try:
            body = json.loads(self.rfile.read(length).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            self._error(400, "body is not valid JSON")
            return None
        if not isinstance(body, dict):
            self._error(400, "body must be a JSON object")
            return None
        return body

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path not in ("/api/caption", "/api/tags"):
            self._error(404, "not found")
            return
        body = self._body()
        if body is None:
            return
        store = self.server.store
        self.server.track(self.connection, True)  # from here on, stopping the server waits for this save
        try:
            if path == "/api/caption":
                updated = store.set_caption(body.get("path"), body.get("text"), body.get("base", NO_BASE))
                logger.info("saved caption of %s", body.get("path"))
                self._json(200, {"ok": True, "updated": updated, "written": 1})
            else:
                updated, written, problems = store.change_tags(body.get("paths"), body.get("op"), body.get("tags"))
                logger.info("%s tags %s: %d caption files written", body.get("op"), body.get("tags"), written)
                self._json(200, {"ok": True, "updated": updated, "written": written, "problems": problems})
        except EditRefused as exc:
            self._error(exc.status, str(exc))
        except OSError as exc:
            self._error(500, f"cannot write the caption file ({exc.strerror or exc})")


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(server: ReviewServer) -> None:
    """Serve until Ctrl-C (or SIGTERM); a save in progress finishes before the server closes."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
