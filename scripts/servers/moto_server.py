"""moto_server, patched so that user-metadata names may contain "_" (etlfs_sha256).

Under moto's WSGI server (werkzeug) a header name with "_" is dropped (and CGI-style environ
names could not tell "_" from "-" anyway); real S3 keeps them. This launcher carries such
x-amz-meta-* names through the environ with ".." for "_" and turns ".." back into "_" where
moto reads metadata from the request. Arguments are moto_server's (-H HOST -p PORT).
"""
import sys

import moto.s3.responses
import moto.s3.utils
import moto.server
from werkzeug.serving import WSGIRequestHandler

_make_environ = WSGIRequestHandler.make_environ


def make_environ(self):
    environ = _make_environ(self)
    for name, value in self.headers.items():
        if "_" in name and name.lower().startswith("x-amz-meta-"):
            environ["HTTP_" + name.replace("_", "..").upper().replace("-", "_")] = value
    return environ


_metadata_from_headers = moto.s3.utils.metadata_from_headers


def metadata_from_headers(headers):
    meta = _metadata_from_headers(headers)
    for key in [k for k in meta.keys() if ".." in k and k.lower().startswith("x-amz-meta-")]:
        meta[key.replace("..", "_")] = meta.pop(key)
    return meta


assert callable(_make_environ) and callable(_metadata_from_headers)
WSGIRequestHandler.make_environ = make_environ
moto.s3.utils.metadata_from_headers = metadata_from_headers
moto.s3.responses.metadata_from_headers = metadata_from_headers
sys.exit(moto.server.main())
