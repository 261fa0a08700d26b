"""Reads that the GCS adapter (gcs_adapter.py) completes for fake-gcs-server: the parts of a
ListObjectsV2 that it ignores (start-after, max-keys, continuation tokens) and the conditional
headers of GET/HEAD (If-Match & co), evaluated here."""

import base64
import email.utils
import urllib.parse
import xml.etree.ElementTree as ET

from gcs_http import DEFAULT_MAX_KEYS, HOP_BY_HOP, quote, xml_error


class Reads:
    """Listing and conditional reads (mixed into the Handler)."""


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
