"""Creates an Azure container on the test Azurite with a SharedKey-signed request (stdlib only).

    azure_mkcontainer.py ENDPOINT ACCOUNT KEY NAME

ENDPOINT is http://127.0.0.1:PORT/ACCOUNT. An existing container is fine. The tests call it
through RUN_DIR/bin/azure-mkcontainer (scripts/servers/azure-mkcontainer), which supplies the
first three arguments.
"""
import base64
import email.utils
import hashlib
import hmac
import http.client
import sys
import urllib.parse

if len(sys.argv) != 5:
    sys.exit("usage: azure_mkcontainer.py ENDPOINT ACCOUNT KEY NAME")
endpoint, account, key, name = sys.argv[1:]
date, version = email.utils.formatdate(usegmt=True), "2021-08-06"
# https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
string_to_sign = "\n".join(
    ["PUT", "", "", "", "", "", "", "", "", "", "", "",
     f"x-ms-date:{date}\nx-ms-version:{version}",
     f"/{account}{urllib.parse.urlparse(endpoint).path}/{name}\nrestype:container"]
)
sig = base64.b64encode(
    hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()
).decode()
u = urllib.parse.urlparse(endpoint)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
conn.request("PUT", f"{u.path}/{name}?restype=container", body=b"", headers={
    "x-ms-date": date, "x-ms-version": version,
    "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
resp = conn.getresponse()
body = resp.read().decode(errors="replace")
if resp.status not in (201, 409):  # 409: it exists already
    sys.exit(f"azure-mkcontainer {name}: HTTP {resp.status}: {body}")
