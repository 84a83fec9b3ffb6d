"""The matcher for people and scripts: `monitor match` (backtest) and `monitor explain`.

Pure: lines in, lines out. `match_lines` streams, one input line at a time, so an archive of
any size goes through in constant memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from monitor.text.match import Explanation, Matcher, MatchInput, Span
from monitor.text.normalize import detect_language

_FIELDS = ("title", "summary", "content")


def _text(value: Any) -> str:
    """A field as text, whatever the archive put there (null, a number, a list of strings)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(_text(v) for v in value)
    return str(value)


def item_from_json(data: dict[str, Any], needs_language: bool) -> MatchInput:
    fields = {name: _text(data.get(name)) for name in _FIELDS}
    if not fields["title"]:
        fields["title"] = _text(data.get("headline") or data.get("text"))
    if not fields["summary"]:
        # Archives name the lede differently (feeds say description, datasets abstract).
        fields["summary"] = _text(data.get("description") or data.get("abstract"))
    language = data.get("language")
    if not isinstance(language, str) or not language:
        language = detect_language("\n".join(fields.values())) if needs_language else None
    feed = data.get("feed")
    return MatchInput(**fields, feed=feed if isinstance(feed, str) else None,
                      language=language)


def match_lines(matcher: Matcher, lines: Iterable[str], details: bool = False) -> Iterator[str]:
    """One JSON line out per JSON line in, in order: {"id": ..., "watches": [...]}.

    A line that is not a JSON object still gets its output line, with an "error", so the
    output stays aligned with the input. Blank lines are not items and are skipped.
    """
    needs_language = matcher.uses_languages
    for number, line in enumerate(lines, start=1):
        line = line.strip().lstrip("\ufeff")
        if not line:
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            yield _dump({"id": None, "watches": [], "error": f"line {number}: not JSON: {exc}"})
            continue
        if not isinstance(data, dict):
            yield _dump({"id": None, "watches": [],
                         "error": f"line {number}: expected a JSON object"})
            continue
        matches = matcher.match(item_from_json(data, needs_language), with_spans=details)
        out: dict[str, Any] = {"id": data.get("id"), "watches": [m.watch for m in matches]}
        if details:
            out["matches"] = [m.as_dict() for m in matches]
        yield _dump(out)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def highlight(text: str, spans: Iterable[Span], start_mark: str = "⟦",
              end_mark: str = "⟧") -> str:
    """The text with every span marked; overlapping spans are merged."""
    ranges = sorted((s.start, s.end) for s in spans if s.end > s.start)
    merged: list[list[int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, position = [], 0
    for start, end in merged:
        out += [text[position:start], start_mark, text[start:end], end_mark]
        position = end
    out.append(text[position:])
    return "".join(out)


def render_explanations(item: MatchInput, explanations: list[Explanation],
                        color: bool = False) -> str:
    """What `monitor explain` prints for one item."""
    start_mark, end_mark = ("\x1b[1;7m", "\x1b[0m") if color else ("⟦", "⟧")
    spans = [s for e in explanations if e.match for s in e.match.spans]
    lines = []
    for name in _FIELDS:
        text = getattr(item, name)
        if text:
            marked = highlight(text, [s for s in spans if s.field == name], start_mark, end_mark)
            lines.append(f"{name}: {marked}")
    context = [f"feed {item.feed}" if item.feed else "", f"language {item.language or '?'}"]
    lines.append("(" + ", ".join(c for c in context if c) + ")")
    for e in explanations:
        if e.match is not None:
            lines.append(f"MATCH {e.watch}: " + ", ".join(e.match.terms))
            for s in e.match.spans:
                lines.append(f"  {s.field} [{s.start}:{s.end}] «{s.text}»  <- {s.term}")
        else:
            lines.append(f"no match {e.watch}:")
            lines += [f"  - {reason}" for reason in e.reasons]
    if not any(e.matched for e in explanations):
        lines.append("nothing matched" if explanations else "no watches are configured")
    return "\n".join(lines) + "\n"
