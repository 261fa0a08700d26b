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
  any XML request to a bucket that does not exist  404 NoSuchBucket, as GCS answers (fake-gcs
                                                   answers a bare 404, or a 500 to a listing)
  everything else (GET/HEAD/DELETE of objects,     passed through unchanged
    the JSON API /storage/v1/..., /upload/...)

Stdlib only. Usage:
  gcs_adapter.py --port PORT --upstream http://127.0.0.1:FAKE_GCS_PORT --state-dir DIR

The operations live beside this file: gcs_http.py (plumbing), gcs_writes.py, gcs_multipart.py
and gcs_reads.py; this file routes each request to one of them.
"""

import argparse
import http.server
import os
import sys
import urllib.parse

from gcs_http import Plumbing, Upstream, quote
from gcs_multipart import Multipart
from gcs_reads import Reads
from gcs_writes import Writes


class Handler(Writes, Multipart, Reads, Plumbing):
    protocol_version = "HTTP/1.1"
    server_version = "etlfs-gcs-adapter"

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

    # Buckets seen to exist: the tests never delete one, so only a miss is asked again.
    known_buckets = set()

    def bucket_exists(self, bucket):
        if bucket not in Handler.known_buckets:
            status, _, _ = self.upstream.call("GET", f"/storage/v1/b/{quote(bucket)}")
            if status != 200:
                return False
            Handler.known_buckets.add(bucket)
        return True

    def handle_one(self):
        parsed = self.parse()
        if parsed is None:
            return self.forward()
        bucket, name, q = parsed
        if not self.bucket_exists(bucket):
            self.read_body()
            if self.command == "HEAD":
                return self.reply(404)
            return self.fail(404, "NoSuchBucket", "The specified bucket does not exist.")
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
