"""A loopback HTTP proxy in front of the test registry, to misbehave on purpose.

It forwards GET/HEAD requests to the upstream registry and can drop the Range
header (a server that ignores ranges answers 200 with the whole blob), add a
delay per request and cap bandwidth (WAN emulation), and counts the body bytes
it sends back.
"""

from __future__ import annotations

import collections
import http.server
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class ProxyOptions:
    drop_range: bool = False
    delay: float = 0.0  # seconds added to each request
    bandwidth: float = 0.0  # bytes per second; 0 = unlimited
    # every Nth request answers 503 (odd ones) or 429 with Retry-After (even ones)
    fail_every: int = 0
    # blob GETs answer 307 to this base URL (another proxy: "object storage")
    redirect_blobs_to: str = ""
    # PATCH (a chunked upload's pieces) answers 405, as registries without chunked
    # uploads do
    refuse_patch: bool = False
    # a PUT of an image index answers 415, as registries without index support do
    refuse_index: bool = False
    # a GET asking for several ranges answers this status (GHCR's CDN: 501; zot: 416)
    multirange_status: int = 0
    # an upload's Location goes back relative ("/v2/..."), as some registries send it
    relative_location: bool = False


class Proxy:
    def __init__(self, upstream: str, options: ProxyOptions | None = None):
        self.upstream = upstream.rstrip("/")
        self.options = options or ProxyOptions()
        self.bytes_sent = 0
        self.requests = 0
        # (method, path, Range header or "") of every request, as it arrived
        self.seen: list[tuple[str, str, str]] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self._free_at = 0.0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body go out in separate writes: with Nagle's algorithm the
                # body of a small answer waits for the client's delayed ACK (40 ms), which
                # is no part of the link being emulated
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_HEAD(self) -> None:
                self._forward(body=False)

            def do_GET(self) -> None:
                self._forward(body=True)

            # uploads: forwarded with their bodies
            def do_POST(self) -> None:
                self._forward(body=True)

            def do_PUT(self) -> None:
                kind = self.headers.get("Content-Type", "")
                if proxy.options.refuse_index and ("index" in kind or "list" in kind):
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    body = b'{"errors":[{"code":"MANIFEST_INVALID","message":"unsupported"}]}'
                    self.send_response(415)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._forward(body=True)

            def do_PATCH(self) -> None:
                if proxy.options.refuse_patch:
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    self.send_response(405)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._forward(body=True)

            def do_DELETE(self) -> None:
                self._forward(body=True)

            def _forward(self, body: bool) -> None:
                opts = proxy.options
                with proxy._lock:
                    proxy.seen.append((self.command, self.path, self.headers.get("Range", "")))
                # repeated headers (skopeo sends several Accept lines) are joined, not lost
                headers = {k: ", ".join(self.headers.get_all(k) or [])
                           for k in set(self.headers.keys())
                           if k.lower() not in ("host", "connection")
                           and not (opts.drop_range and k.lower() == "range")}
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else None
                req = urllib.request.Request(proxy.upstream + self.path, headers=headers,
                                             method=self.command, data=payload)
                if opts.delay:
                    time.sleep(opts.delay)
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                if opts.fail_every and n % opts.fail_every == 0:
                    self.send_response(503 if (n // opts.fail_every) % 2 else 429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if opts.multirange_status and "," in self.headers.get("Range", ""):
                    with proxy._lock:
                        proxy.statuses[opts.multirange_status] += 1
                    self.send_response(opts.multirange_status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if opts.redirect_blobs_to and "/blobs/sha256:" in self.path and body:
                    self.send_response(307)
                    self.send_header("Location", opts.redirect_blobs_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    resp = urllib.request.urlopen(req, timeout=60)
                except urllib.error.HTTPError as err:
                    resp = err
                data = resp.read() if body else b""
                with proxy._lock:
                    proxy.statuses[resp.status] += 1
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        if k.lower() == "location":  # uploads go on through the proxy
                            v = v.replace(proxy.upstream, "" if opts.relative_location
                                          else f"http://{proxy.host}")
                        self.send_header(k, v)
                length = len(data) if body else int(resp.headers.get("Content-Length", 0))
                self.send_header("Content-Length", str(length))
                self.end_headers()
                with proxy._lock:
                    proxy.bytes_sent += len(data)
                step = 64 * 1024
                for i in range(0, len(data), step):
                    piece = data[i:i + step]
                    if opts.bandwidth:
                        proxy._pace(len(piece))
                    self.wfile.write(piece)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _pace(self, n: int) -> None:
        """One link shared by all connections: wait until n more bytes fit the bandwidth."""
        with self._lock:
            now = time.monotonic()
            end = max(now, self._free_at) + n / self.options.bandwidth
            self._free_at = end
        time.sleep(end - now)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
