#!/usr/bin/env python3
"""A loopback adapter that lets object_store's GCS client write to fake-gcs-server.

object_store (0.14) talks to GCS through the XML API. Upstream fake-gcs-server serves XML reads
(GET/HEAD of an object, with x-goog-meta-* headers, and `?list-type=2` listings) but answers
XML writes with `400 invalid uploadType`. This proxy sits in front of it, on 127.0.0.1 only, and
turns every XML request that fake-gcs-server gets wrong into JSON-API calls:

  XML request (from object_store)                  what the adapter does
  -----------------------------------------------  --------------------------------------------
  PUT /B/O  (body, Content-Type, x-goog-meta-*,    POST /upload/storage/v1/b/B/o?uploadType=
    Cache-Control & co, x-goog-if-generation-match)  multipart (JSON metadata + media, atomic;
                                                   ifGenerationMatch passed on)
  PUT /B/O  + x-goog-copy-source: SB/SO            POST /storage/v1/b/SB/o/SO/copyTo/b/B/o/O
    (+ x-goog-if-generation-match: 0)                (create-only is checked here: fake-gcs
                                                   ignores ifGenerationMatch on copies)
  POST /B/O?uploads                                starts an XML multipart upload; its state and
                                                   parts live in --state-dir (they survive a
                                                   restart of the adapter)
  PUT /B/O?partNumber=N&uploadId=U                 stores the part on disk, returns its ETag
  POST /B/O?uploadId=U  (CompleteMultipartUpload)  one multipart/related JSON upload of the
                                                   listed parts, with the initiate's metadata
  DELETE /B/O?uploadId=U                           drops the parts
  GET /B?list-type=2 ...                           upstream's listing, with what fake-gcs
                                                   ignores applied here: start-after, max-keys
                                                   (default 1000, as GCS) and continuation
                                                   tokens
  GET/HEAD /B/O  with If-Match, If-None-Match,     passed through; the conditions (ignored by
    If-(Un)Modified-Since                            fake-gcs) are evaluated here (412 / 304)
  everything else (GET/HEAD/DELETE of objects,     passed through unchanged
    the JSON API /storage/v1/..., /upload/...)

Stdlib only. Usage:
  gcs_adapter.py --port PORT --upstream http://127.0.0.1:FAKE_GCS_PORT --state-dir DIR
"""

import argparse
import base64
import email.utils
import hashlib
import http.client
import http.server
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
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


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "etlfs-gcs-adapter"
    upstream: Upstream = None
    state_dir: str = None
    verbose = False

    # ---- plumbing ------------------------------------------------------------------------

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

    # ---- dispatch ------------------------------------------------------------------------

    def parse(self):
        """(bucket, object name or None, query dict) of an XML-API path, or None."""
        u = urllib.parse.urlsplit(self.path)
        path = u.path
        if not path.startswith("/") or path == "/":
            return None
        first = path[1:].split("/", 1)[0]
        if first in ("storage", "upload", "download", "_internal", "batch"):
            return None  # the JSON API (or fake-gcs-server's own endpoints)
        parts = path[1:].split("/", 1)
        bucket = urllib.parse.unquote(parts[0])
        name = urllib.parse.unquote(parts[1]) if len(parts) > 1 and parts[1] else None
        query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        return bucket, name, query

    def handle_one(self):
        parsed = self.parse()
        if parsed is None:
            return self.forward()
        bucket, name, q = parsed
        m = self.command
        if name is None:
            if m == "GET" and q.get("list-type") == "2":
                return self.list_v2(bucket, q)
            return self.forward()
        if m == "PUT" and "uploadId" in q and "partNumber" in q:
            return self.put_part(bucket, name, q["uploadId"], q["partNumber"])
        if m == "PUT" and self.headers.get("x-goog-copy-source"):
            return self.copy(bucket, name)
        if m == "PUT":
            return self.put_object(bucket, name)
        if m == "POST" and "uploads" in q:
            return self.initiate(bucket, name)
        if m == "POST" and "uploadId" in q:
            return self.complete(bucket, name, q["uploadId"])
        if m == "DELETE" and "uploadId" in q:
            return self.abort(bucket, name, q["uploadId"])
        if m in ("GET", "HEAD") and self.conditional_headers():
            return self.conditional_get()
        return self.forward()

    def dispatch(self):
        try:
            self.handle_one()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - report every failure as a 500
            self.close_connection = True
            self.log_message("error in %s %s: %r", self.command, self.path, e)
            try:
                self.fail(500, "InternalError", f"gcs_adapter: {e!r}")
            except OSError:
                pass

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = dispatch

    # ---- helpers for uploads -------------------------------------------------------------

    def resource_fields(self, headers):
        """JSON object-resource fields from XML request headers."""
        res, meta = {}, {}
        for k, v in headers.items():
            lk = k.lower()
            if lk in RESOURCE_HEADERS:
                res[RESOURCE_HEADERS[lk]] = v
            elif lk.startswith(META_PREFIX):
                meta[k[len(META_PREFIX) :]] = v
        if meta:
            res["metadata"] = meta
        res.setdefault("contentType", "application/octet-stream")
        return res

    def upload(self, bucket, name, resource, chunks, length, generation_match):
        """A multipart/related JSON media upload of `length` bytes from `chunks()` (a function
        returning an iterable). Returns (status, headers, body) to send."""
        boundary = "etlfs-" + uuid.uuid4().hex
        meta = dict(resource, name=name)
        head = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            + json.dumps(meta)
            + f"\r\n--{boundary}\r\nContent-Type: {resource['contentType']}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body():
            yield head
            yield from chunks()
            yield tail

        target = f"/upload/storage/v1/b/{quote(bucket)}/o?uploadType=multipart"
        if generation_match is not None:
            target += "&ifGenerationMatch=" + quote(generation_match)
        headers = {
            "Content-Type": f"multipart/related; boundary={boundary}",
            "Content-Length": str(len(head) + length + len(tail)),
        }
        status, _, data = self.upstream.call("POST", target, body(), headers)
        return self.upload_result(status, data)

    def upload_result(self, status, data):
        if status == 412:
            return 412, {}, xml_error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
        if status == 404:
            return 404, {}, xml_error("NoSuchBucket", data.decode(errors="replace"))
        if not 200 <= status < 300:
            return status, {}, xml_error("UpstreamError", data.decode(errors="replace"))
        obj = json.loads(data)
        headers = {"ETag": f'"{obj.get("etag") or obj.get("md5Hash", "")}"'}
        if obj.get("generation"):
            headers["x-goog-generation"] = str(obj["generation"])
        return 200, headers, obj

    def object_exists(self, bucket, name):
        status, _, _ = self.upstream.call(
            "GET", f"/storage/v1/b/{quote(bucket)}/o/{quote(name)}"
        )
        if status == 200:
            return True
        if status == 404:
            return False
        raise RuntimeError(f"checking {bucket}/{name}: HTTP {status}")

    # ---- the translated operations ---------------------------------------------------------

    def put_object(self, bucket, name):
        resource = self.resource_fields(self.headers)
        data = self.read_body()  # object_store holds a PUT's payload in memory anyway
        gen = self.headers.get("x-goog-if-generation-match")
        status, headers, result = self.upload(
            bucket, name, resource, lambda: [data], len(data), gen
        )
        self.reply(status, b"" if status == 200 else result, headers)

    def copy(self, bucket, name):
        src = urllib.parse.unquote(self.headers["x-goog-copy-source"]).lstrip("/")
        if "/" not in src:
            return self.fail(400, "InvalidArgument", f"bad x-goog-copy-source {src!r}")
        src_bucket, src_name = src.split("/", 1)
        self.read_body()
        if self.headers.get("x-goog-if-generation-match") == "0" and self.object_exists(
            bucket, name
        ):
            return self.fail(412, "PreconditionFailed", f"{name} already exists")
        target = (
            f"/storage/v1/b/{quote(src_bucket)}/o/{quote(src_name)}"
            f"/copyTo/b/{quote(bucket)}/o/{quote(name)}"
        )
        status, _, data = self.upstream.call("POST", target, b"", {"Content-Length": "0"})
        if status == 404:
            return self.fail(404, "NoSuchKey", f"{src_bucket}/{src_name} not found")
        if not 200 <= status < 300:
            return self.fail(status, "UpstreamError", data.decode(errors="replace"))
        obj = json.loads(data)
        etag = f'"{obj.get("etag", "")}"'
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult>'
            f"<LastModified>{escape(obj.get('updated', ''))}</LastModified>"
            f"<ETag>{escape(etag)}</ETag></CopyObjectResult>"
        ).encode()
        headers = {"ETag": etag}
        if obj.get("generation"):
            headers["x-goog-generation"] = str(obj["generation"])
        self.reply(200, body, headers)

    def upload_dir(self, upload_id):
        if not upload_id or not all(c in "0123456789abcdef" for c in upload_id):
            return None
        d = os.path.join(self.state_dir, "uploads", upload_id)
        return d if os.path.isdir(d) else None

    def initiate(self, bucket, name):
        self.read_body()
        status, _, _ = self.upstream.call("GET", f"/storage/v1/b/{quote(bucket)}")
        if status == 404:
            return self.fail(404, "NoSuchBucket", f"no bucket {bucket}")
        upload_id = uuid.uuid4().hex
        d = os.path.join(self.state_dir, "uploads", upload_id)
        os.makedirs(d)
        info = {
            "bucket": bucket,
            "name": name,
            "resource": self.resource_fields(self.headers),
            "generation_match": self.headers.get("x-goog-if-generation-match"),
        }
        with open(os.path.join(d, "upload.json"), "w") as f:
            json.dump(info, f)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
            f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
        ).encode()
        self.reply(200, body)

    def put_part(self, bucket, name, upload_id, part_number):
        d = self.upload_dir(upload_id)
        if d is None:
            self.read_body()
            return self.fail(404, "NoSuchUpload", f"no upload {upload_id}")
        try:
            n = int(part_number)
            if not 1 <= n <= 10000:
                raise ValueError
        except ValueError:
            self.read_body()
            return self.fail(400, "InvalidArgument", f"bad partNumber {part_number!r}")
        chunks, _ = self.body_chunks()
        md5 = hashlib.md5()
        tmp = os.path.join(d, f"part-{n:05}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            for data in chunks:
                md5.update(data)
                f.write(data)
        etag = f'"{md5.hexdigest()}"'
        with open(tmp + ".etag", "w") as f:
            f.write(etag)
        # A retried part replaces the earlier attempt; both files renamed into place.
        os.replace(tmp + ".etag", os.path.join(d, f"part-{n:05}.etag"))
        os.replace(tmp, os.path.join(d, f"part-{n:05}"))
        self.reply(200, b"", {"ETag": etag})

    def complete(self, bucket, name, upload_id):
        body = self.read_body()
        d = self.upload_dir(upload_id)
        if d is None:
            return self.fail(404, "NoSuchUpload", f"no upload {upload_id}")
        with open(os.path.join(d, "upload.json")) as f:
            info = json.load(f)
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            return self.fail(400, "MalformedXML", str(e))
        files = []
        for part in root.iter():
            if part.tag.split("}")[-1] != "Part":
                continue
            fields = {c.tag.split("}")[-1]: (c.text or "").strip() for c in part}
            n = int(fields.get("PartNumber", "0"))
            path = os.path.join(d, f"part-{n:05}")
            try:
                with open(path + ".etag") as f:
                    stored = f.read()
            except FileNotFoundError:
                return self.fail(400, "InvalidPart", f"part {n} was not uploaded")
            if fields.get("ETag", "").strip('"') != stored.strip('"'):
                return self.fail(400, "InvalidPart", f"part {n}: ETag mismatch")
            files.append(path)
        if not files:
            return self.fail(400, "MalformedXML", "no parts")
        length = sum(os.path.getsize(p) for p in files)

        def chunks():
            for p in files:
                with open(p, "rb") as f:
                    while data := f.read(CHUNK):
                        yield data

        status, headers, result = self.upload(
            info["bucket"], info["name"], info["resource"], chunks, length,
            info.get("generation_match"),
        )
        if status != 200:
            return self.reply(status, result, headers)
        shutil.rmtree(d, ignore_errors=True)
        out = (
            '<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
            f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
            f"<ETag>{escape(headers['ETag'])}</ETag></CompleteMultipartUploadResult>"
        ).encode()
        self.reply(200, out, headers)

    def abort(self, bucket, name, upload_id):
        self.read_body()
        d = self.upload_dir(upload_id)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)
        self.reply(204)

    # ---- listing -------------------------------------------------------------------------

    def list_v2(self, bucket, q):
        self.read_body()
        up = {"list-type": "2"}
        for k in ("prefix", "delimiter"):
            if q.get(k):
                up[k] = q[k]
        target = f"/{quote(bucket)}?" + urllib.parse.urlencode(up, quote_via=urllib.parse.quote)
        status, headers, data = self.upstream.call("GET", target)
        if status != 200:
            return self.reply(status, data, {"Content-Type": headers.get("Content-Type", "application/xml")})
        root = ET.fromstring(data)
        entries = []  # (key, element)
        for el in list(root):
            tag = el.tag.split("}")[-1]
            if tag == "Contents":
                entries.append((el.findtext("Key") or "", el))
            elif tag == "CommonPrefixes":
                entries.append((el.findtext("Prefix") or "", el))
        entries.sort(key=lambda e: e[0])
        after = q.get("start-after", "")
        token = q.get("continuation-token")
        if token:
            try:
                after = max(after, base64.urlsafe_b64decode(token.encode()).decode())
            except ValueError:
                return self.fail(400, "InvalidArgument", "bad continuation-token")
        if after:
            entries = [e for e in entries if e[0] > after]
        try:
            max_keys = min(int(q.get("max-keys", DEFAULT_MAX_KEYS)), DEFAULT_MAX_KEYS)
        except ValueError:
            return self.fail(400, "InvalidArgument", "bad max-keys")
        page, rest = entries[:max_keys], entries[max_keys:]
        out = ET.Element("ListBucketResult")
        ET.SubElement(out, "Name").text = bucket
        ET.SubElement(out, "Prefix").text = q.get("prefix", "")
        if q.get("delimiter"):
            ET.SubElement(out, "Delimiter").text = q["delimiter"]
        if after and not token:
            ET.SubElement(out, "StartAfter").text = after
        ET.SubElement(out, "MaxKeys").text = str(max_keys)
        ET.SubElement(out, "KeyCount").text = str(len(page))
        ET.SubElement(out, "IsTruncated").text = "true" if rest and page else "false"
        if token:
            ET.SubElement(out, "ContinuationToken").text = token
        if rest and page:
            ET.SubElement(out, "NextContinuationToken").text = base64.urlsafe_b64encode(
                page[-1][0].encode()
            ).decode()
        for _, el in page:
            out.append(el)
        body = b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(out, encoding="utf-8")
        self.reply(200, body)

    # ---- conditional reads ---------------------------------------------------------------

    def conditional_headers(self):
        return any(
            self.headers.get(h)
            for h in ("If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since")
        )

    def conditional_get(self):
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "host" and not k.lower().startswith("if-")
        }
        resp = self.upstream.request(self.command, self.path, None, headers)
        if resp.status not in (200, 206):
            return self.relay(resp)
        etag = resp.getheader("ETag", "")
        modified = resp.getheader("Last-Modified")
        failed = None

        def tags(v):
            return [t.strip().removeprefix("W/").strip('"') for t in v.split(",")]

        def date(v):
            try:
                return email.utils.parsedate_to_datetime(v).timestamp()
            except (TypeError, ValueError):
                return None

        im, inm = self.headers.get("If-Match"), self.headers.get("If-None-Match")
        ims, ius = self.headers.get("If-Modified-Since"), self.headers.get("If-Unmodified-Since")
        lm = date(modified) if modified else None
        if im and "*" not in tags(im) and etag.strip('"') not in tags(im):
            failed = 412
        elif ius and lm is not None and date(ius) is not None and lm > date(ius):
            failed = 412
        elif inm and ("*" in tags(inm) or etag.strip('"') in tags(inm)):
            failed = 304
        elif ims and not inm and lm is not None and date(ims) is not None and lm <= date(ims):
            failed = 304
        if failed is None:
            return self.relay(resp)
        self.upstream.drop()  # do not read a body we will not send
        keep = {"ETag": etag}
        if modified:
            keep["Last-Modified"] = modified
        if failed == 304:
            self.reply(304, b"", keep)
        else:
            self.reply(412, xml_error("PreconditionFailed", "condition not met"), keep)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="fake-gcs-server's base URL (http)")
    p.add_argument("--state-dir", required=True, help="where multipart uploads are kept")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1"], help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="do not log every request")
    a = p.parse_args()
    os.makedirs(os.path.join(a.state_dir, "uploads"), exist_ok=True)
    Handler.upstream = Upstream(a.upstream)
    Handler.state_dir = a.state_dir
    Handler.verbose = not a.quiet
    srv = Server((a.host, a.port), Handler)
    sys.stderr.write(f"gcs_adapter: http://{a.host}:{a.port} -> {a.upstream}\n")
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
