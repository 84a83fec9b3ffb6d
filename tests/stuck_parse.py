"""A stand-in for `prepare_document` that a parse worker imports by name: the document
`STUCK` keeps it inside one C call that no alarm interrupts; any other is prepared."""

from __future__ import annotations

from collections.abc import Mapping

from monitor.articles import PreparedDocument, prepare_document
from monitor.parse import KnownItems
from monitor.text.match import Matcher

STUCK = b"<stuck/>"


def prepare_unless_stuck(body: bytes, headers: Mapping[str, str], url: str, feed_name: str,
                         matcher: Matcher, known: KnownItems | None) -> PreparedDocument:
    if body == STUCK:
        # `sum` over a range runs in C without checking for signals: hours, not seconds.
        sum(range(10**15))
    return prepare_document(body, headers, url, feed_name, matcher, known)
