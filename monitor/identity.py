"""What makes two items the same article: canonical links and text fingerprints. Pure."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from monitor.text.normalize import match_key

# Query parameters that say who shared a link, not what it points to.
_TRACKING_PREFIXES = ("utm_", "mc_", "pk_", "mtm_")
_TRACKING_NAMES = frozenset({
    "fbclid", "gclid", "dclid", "msclkid", "yclid", "igshid", "ref", "ref_src", "cmpid",
    "from", "source", "rss", "s_cid", "_ga", "ocid", "at_medium", "at_campaign",
})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_link(url: str | None) -> str | None:
    """A link without fragment, tracking parameters, default port or scheme difference.

    It is an identity key, not a URL to fetch: http and https forms of one page are the same
    article, so both become https.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().removeprefix("www.")
    if port and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING_PREFIXES) and k.lower() not in _TRACKING_NAMES
    ]
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/")
    return urlunsplit(("https", host, path, urlencode(query), ""))


def fingerprint(title: str, body: str) -> str:
    """Hash of the folded text with all spacing removed.

    Spacing goes because the same words arrive with a ZWNJ, a space or nothing between
    them («همکاری‌های» / «همکاری های» / «همکاریهای»), as in the seed articles.
    """
    return fingerprint_of_keys(match_key(title), match_key(body))


def fingerprint_of_keys(title_key: str, body_key: str) -> str:
    """`fingerprint` from the match keys of the title and the body."""
    folded = title_key.replace(" ", "") + "\n" + body_key.replace(" ", "")
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()[:40]
