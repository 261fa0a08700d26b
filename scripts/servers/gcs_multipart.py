"""XML multipart uploads in the GCS adapter (gcs_adapter.py), which fake-gcs-server lacks.

An upload's metadata and its parts live in STATE_DIR/uploads/ID (shared by every adapter
process, so an upload survives a restart of the adapter and can be finished through another
front); completing it sends all parts as one JSON-API upload (Writes.upload)."""

import hashlib
import json
import os
import shutil
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

from gcs_http import CHUNK, quote


class Multipart:
    """Initiate, upload part, complete and abort (mixed into the Handler)."""

    state_dir: str = None

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
