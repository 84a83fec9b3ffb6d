"""hazm's Normalizer is loaded without the rest of hazm (`monitor.text.hazm_lite`): each check
runs in a fresh interpreter, since what a process has imported is the thing under test."""

from __future__ import annotations

import json
import subprocess
import sys

# What `import hazm` would bring in and the normalizer does not need.
HEAVY = ("sklearn", "scipy", "gensim", "fasttext", "pycrfsuite", "nltk.corpus", "nltk.tag")


def run(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_the_daemon_loads_the_normalizer_without_the_rest_of_hazm() -> None:
    result = run(f"""
import json, sys
import monitor.cli, monitor.scheduler
from monitor.text.normalize import display_text, load_normalizer
load_normalizer()
text = display_text("سازمان همكاري هاي اسلامي ميشود")
print(json.dumps({{"text": text, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
""")
    assert result["heavy"] == []
    # hazm's rules are all there: letter forms, the affix ZWNJ, «می» split off the verb.
    assert result["text"] == "سازمان همکاری\u200cهای اسلامی می\u200cشود"


def test_a_hazm_imported_whole_before_is_used_as_it_is() -> None:
    result = run("""
import json
import hazm
from monitor.text import hazm_lite
from monitor.text.normalize import display_text
print(json.dumps({"same": hazm_lite.load() is hazm, "tagger": hasattr(hazm, "POSTagger"),
                  "text": display_text("همكاري هاي")}))
""")
    assert result == {"same": True, "tagger": True, "text": "همکاری\u200cهای"}
