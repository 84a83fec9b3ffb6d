"""The seed baseline: founding articles stored as already known, so they never alert.

`seed_data/manifest.json` lists the files and how a reader would split each one:
`overview-then-items` (an overview paragraph, then blank-line separated headline + lede
items) or `article` (one article, one paragraph per line).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from monitor.parse import Entry

_SENTENCE_END = re.compile(r"(?<=[.!?؟])\s")


class SeedError(Exception):
    pass


@dataclass(frozen=True)
class SeedFile:
    file: str
    layout: str
    entries: list[Entry]

    @property
    def origin(self) -> str:
        return f"seed:{self.file}"


def _first_sentence(paragraph: str) -> str:
    return _SENTENCE_END.split(paragraph.strip(), maxsplit=1)[0].strip()


def _blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    return [b for b in blocks if b]


def split_overview_then_items(name: str, text: str) -> list[Entry]:
    blocks = _blocks(text)
    if not blocks:
        return []
    overview = " ".join(blocks[0])
    entries = [Entry(key=f"seed:{name}#0", link=None, title=_first_sentence(overview),
                     summary=overview, content="", published=None)]
    for i, block in enumerate(blocks[1:], start=1):
        headline, lede = block[0], " ".join(block[1:])
        entries.append(Entry(key=f"seed:{name}#{i}", link=None, title=headline,
                             summary=lede, content="", published=None))
    return entries


def split_article(name: str, text: str) -> list[Entry]:
    paragraphs = [line.strip() for line in text.splitlines() if line.strip()]
    if not paragraphs:
        return []
    return [Entry(key=f"seed:{name}#0", link=None, title=_first_sentence(paragraphs[0]),
                  summary=paragraphs[0], content="\n".join(paragraphs), published=None)]


_LAYOUTS = {"overview-then-items": split_overview_then_items, "article": split_article}


def read_seeds(folder: str | Path) -> list[SeedFile]:
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SeedError(f"{manifest_path}: no seed manifest") from None
    except json.JSONDecodeError as exc:
        raise SeedError(f"{manifest_path}: not valid JSON: {exc}") from None
    seeds = []
    for i, item in enumerate(manifest.get("files", [])):
        layout = item.get("layout")
        if layout not in _LAYOUTS:
            raise SeedError(f"{manifest_path}: files[{i}].layout: expected one of "
                            f"{sorted(_LAYOUTS)}, got {layout!r}")
        path = folder / item["file"]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SeedError(f"{manifest_path}: files[{i}].file: cannot read {path}: "
                            f"{exc.strerror}") from None
        seeds.append(SeedFile(item["file"], layout, _LAYOUTS[layout](item["file"], text)))
    return seeds
