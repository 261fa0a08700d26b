"""HTTP plumbing of the GCS adapter (gcs_adapter.py): the connection to fake-gcs-server and
the reading, answering and passing through of requests that every operation uses."""

import http.client
import http.server
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
# Request headers that become fields of the JSON object resource.
RESOURCE_HEADERS = {
    "content-type": "contentType",
    "cache-control": "cacheControl",
    "content-disposition": "contentDisposition",
    "content-encoding": "contentEncoding",
    "content-language": "contentLanguage",
    "x-goog-storage-class": "storageClass",
}
META_PREFIX = "x-goog-meta-"
CHUNK = 1 << 20
DEFAULT_MAX_KEYS = 1000


def quote(s):
    return urllib.parse.quote(s, safe="")


def xml_error(code, message):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()


class Upstream:
    """One keep-alive connection to fake-gcs-server per handler thread."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        if u.scheme != "http" or not u.hostname:
            sys.exit(f"--upstream must be an http:// URL, not {base!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=300)
            self.local.conn = c
        return c

    def drop(self):
        c = getattr(self.local, "conn", None)
        if c is not None:
            c.close()
        self.local.conn = None

    def request(self, method, target, body=None, headers=None, retry=True):
        """Sends a request; returns the response with its body NOT read yet. `body` is None,
        bytes, or a function that returns an iterable of chunks (called once per attempt)."""
        headers = dict(headers or {})
        try:
            c = self.conn()
            c.request(method, target, body=body() if callable(body) else body, headers=headers)
            return c.getresponse()
        except (http.client.HTTPException, ConnectionError, OSError):
            self.drop()
            # A kept-alive connection may have been closed by the server: retry once on a
            # new connection (every body can be sent again).
            if retry:
                return self.request(method, target, body, headers, retry=False)
            raise

    def call(self, method, target, body=None, headers=None):
        """Sends a request and reads the whole response: (status, headers, body)."""
        r = self.request(method, target, body, headers)
        data = r.read()
        if r.will_close:
            self.drop()
        return r.status, r.headers, data


class Plumbing(http.server.BaseHTTPRequestHandler):
    """Request and response handling shared by the operations (mixed into the Handler)."""

    upstream: Upstream = None
    verbose = False


    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))

    def log_request(self, code="-", size="-"):
        self.log_message('"%s" %s', self.requestline, code)

    def reply(self, status, body=b"", headers=None, content_type="application/xml"):
        self.send_response(status)
        headers = dict(headers or {})
        if body and "Content-Type" not in headers:
            headers["Content-Type"] = content_type
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def fail(self, status, code, message):
        self.reply(status, xml_error(code, message))

    def body_length(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        return int(self.headers.get("Content-Length") or 0)

    def read_body(self):
        n = self.body_length()
        if n is not None:
            return self.rfile.read(n)
        out = bytearray()  # chunked
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def body_chunks(self):
        """The request body as an iterable of chunks, and its length."""
        n = self.body_length()
        if n is None:
            data = self.read_body()
            return [data], len(data)

        def gen(left=n):
            while left > 0:
                data = self.rfile.read(min(CHUNK, left))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                left -= len(data)
                yield data

        return gen(), n

    def relay(self, resp, extra_headers=None):
        """Copies an upstream response to the client, streaming the body."""
        self.send_response(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        body = None
        if length is None and self.command != "HEAD" and resp.status not in (204, 304):
            body = resp.read()  # upstream sent it chunked: we always send a length
            length = str(len(body))
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP or k.lower() in ("content-length", "date", "server"):
                continue
            self.send_header(k, v)
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
        elif body is not None:
            self.wfile.write(body)
        else:
            while True:
                data = resp.read(CHUNK)
                if not data:
                    break
                self.wfile.write(data)
        if resp.will_close:
            self.upstream.drop()

    def forward(self):
        """Passes the request through unchanged."""
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "host"
        }
        body = None
        if self.command in ("POST", "PUT", "PATCH") or self.body_length():
            body = self.read_body()
            headers.pop("Transfer-Encoding", None)
            headers["Content-Length"] = str(len(body))
        resp = self.upstream.request(self.command, self.path, body, headers)
        self.relay(resp)

