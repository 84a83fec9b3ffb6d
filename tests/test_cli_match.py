"""`monitor match` (the backtest) and `monitor explain`, through the real command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import main
from tests.conftest import ROOT, write_config
from tests.servers import FeedServer, rss
from tests.test_match import NOT_OIC, OIC_MENTIONS, ORGAN_MENTIONS

SHIPPED = str(ROOT / "config" / "monitor.yaml")


def _run_match(lines: list[str], *extra: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "--config", SHIPPED, "match", *extra],
        input="\n".join(lines).encode("utf-8"), capture_output=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]


def test_match_streams_one_line_per_item_in_order() -> None:
    items = ([{"id": f"oic-{i}", "title": t} for i, t in enumerate(OIC_MENTIONS)]
             + [{"id": f"not-{i}", "title": t} for i, t in enumerate(NOT_OIC)]
             + [{"id": f"organ-{i}", "summary": t} for i, t in enumerate(ORGAN_MENTIONS)])
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    # What an archive throws at a backtest: a broken line, a blank line, a non-object,
    # missing and odd fields, a big item whose mention is at the very end.
    lines[3:3] = ["{not json", "", "[1, 2]"]
    lines.append(json.dumps({"id": 7, "title": None, "summary": 12, "content": ["a", "b"]}))
    lines.append(json.dumps({"title": "x " * 500_000 + "OIC"}))
    out = _run_match(lines)
    assert len(out) == len(items) + 2 + 2  # every non-blank line answers
    assert out[3]["watches"] == [] and out[3]["error"].startswith("line 4: not JSON")
    assert out[4]["error"] == "line 6: expected a JSON object"
    answers = [o for o in out if "error" not in o]
    assert [a["id"] for a in answers[:len(items)]] == [i["id"] for i in items]
    for item, answer in zip(items, answers, strict=False):
        kind = item["id"].split("-")[0]
        if kind == "oic":
            assert "oic" in answer["watches"], item
        elif kind == "not":
            assert "oic" not in answer["watches"], item
        else:
            assert "oic-organs" in answer["watches"], item
    assert answers[-2] == {"id": 7, "watches": []}
    assert answers[-1] == {"id": None, "watches": ["oic"]}


def test_match_details_give_terms_and_spans() -> None:
    line = json.dumps({"id": 1, "title": "بیانیه سازمان همكاري‌هاي اسلامي درباره غزه"},
                      ensure_ascii=False)
    [out] = _run_match([line], "--details")
    [match] = out["matches"]
    assert match["watch"] == "oic" and match["terms"] == ["سازمان همکاری+ اسلامی"]
    assert [s["text"] for s in match["spans"]] == ["سازمان همكاري‌هاي اسلامي"]


def _explain(*args: str, config: str = SHIPPED) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--config", config, "explain", *args], out=out)
    return code, out.getvalue()


def test_explain_highlights_the_spans() -> None:
    code, text = _explain("الأمين العام لمنظمة التعاون الإسلامي يزور طهران")
    assert code == 0
    assert "title: الأمين العام ⟦لمنظمة التعاون الإسلامي⟧ يزور طهران" in text
    assert "MATCH oic: +منظمة التعاون الإسلامي" in text
    assert "(language ar)" in text
    assert "no match oic-organs:" in text


def test_explain_says_why_nothing_matched(tmp_path: Path) -> None:
    code, text = _explain("نشست سران سازمان همکاری شانگهای")
    assert code == 1
    assert "none of the 'any' terms" in text and text.endswith("nothing matched\n")
    config = write_config(tmp_path / "c.yaml", "sqlite:///unused.db",
                          watches=[{"name": "w", "any": ["سازمان همکاری اسلامی"],
                                    "not": ["ورزش"]}])
    code, text = _explain("سازمان همکاری اسلامی ها", config=str(config))
    assert code == 1
    assert "«سازمان همکاری اسلامی» but the word carries a suffix" in text
    code, text = _explain("ورزش سازمان همکاری اسلامی", config=str(config))
    assert "'not' term 'ورزش' is found in title: «ورزش»" in text


def test_explain_a_file(tmp_path: Path) -> None:
    path = tmp_path / "article.txt"
    path.write_text("L'OCI se réunit\nLe secrétaire général de l'OCI a dit...\n",
                    encoding="utf-8")
    code, text = _explain("--file", str(path))
    assert code == 0
    assert "title: L'⟦OCI⟧ se réunit" in text
    assert "summary: Le secrétaire général de l'⟦OCI⟧ a dit..." in text
    code, _ = _explain("--file", str(tmp_path / "missing.txt"))
    assert code == 64


def test_explain_a_feed_url(tmp_path: Path, feed_server: FeedServer) -> None:
    url = feed_server.set_feed("/f.xml", rss([
        {"title": "OIC summit opens", "link": "http://127.0.0.1/1", "guid": "1",
         "description": "Leaders arrive."},
        {"title": "Weather", "link": "http://127.0.0.1/2", "guid": "2",
         "description": "Sunny."},
    ]))
    config = write_config(tmp_path / "c.yaml", "sqlite:///unused.db",
                          feeds=[{"name": "local", "url": url}],
                          watches=[{"name": "oic", "any": ["OIC"], "feeds": ["local"]}])
    code, text = _explain("--url", url, config=str(config))
    assert code == 0
    first, second = text.split("\n\n")
    assert "title: ⟦OIC⟧ summit opens" in first and "(feed local, language en)" in first
    assert "MATCH oic: OIC" in first
    assert "no match oic:" in second and "nothing matched" in second
    assert feed_server.hits("/f.xml") == 1
    code, _ = _explain("--url", "http://127.0.0.1:9/none.xml", config=str(config))
    assert code == 64


@pytest.mark.parametrize("args", [[], ["--field", "title"]])
def test_explain_needs_something_to_explain(args: list[str]) -> None:
    assert _explain(*args)[0] == 64
