"""Single-request writes of the GCS adapter (gcs_adapter.py): an XML PUT becomes a JSON-API
multipart upload, an XML copy a JSON-API copyTo. The upload helpers also serve the completion
of multipart uploads (gcs_multipart.py)."""

import json
import urllib.parse
import uuid
from xml.sax.saxutils import escape

from gcs_http import META_PREFIX, RESOURCE_HEADERS, quote, xml_error


class Writes:
    """PUT and copy of one object (mixed into the Handler)."""


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
