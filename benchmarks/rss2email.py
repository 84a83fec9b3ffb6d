"""rss2email, the comparison, driven the way its users drive it: `r2e run --no-send`.

It is installed from PyPI into a venv of its own under `benchmarks/.cache/` (gitignored), so
it never mixes with `monitor`'s dependencies. Each benchmark gets a fresh config and data
file; `r2e new` creates them and the feeds are added through the same call `r2e add` makes
(`Feeds.new_feed`), in one process, saved once: adding 2,000 feeds with 2,000 `r2e add`
processes re-reads and re-writes a growing config each time and takes minutes of setup
that nobody would time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parent / ".cache"
VENV = CACHE / "r2e-venv"
R2E = VENV / "bin" / "r2e"

_ADD_FEEDS = """
import json, sys
from rss2email import feeds as _feeds
cfg, data, listing = sys.argv[1:4]
feeds = _feeds.Feeds(datafile_path=data, configfiles=[cfg])
feeds.load()
# Same-host politeness sleeps are off (the default, made explicit) and logging is at
# warning, as monitor's worker runs: neither tool is timed writing progress lines.
feeds.config['DEFAULT']['same-server-fetch-interval'] = '0'
feeds.config['DEFAULT']['verbose'] = 'warning'
for name, url in json.load(open(listing)):
    feeds.new_feed(name=name, url=url)
feeds.save_config()
feeds.save_feeds()
"""


def ensure_installed() -> str:
    """Install rss2email into its own venv if needed; return its version."""
    if not R2E.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "rss2email"], check=True)
    return version()


def version() -> str:
    out = subprocess.run([str(R2E), "--version"], capture_output=True, text=True, check=True)
    return (out.stdout or out.stderr).strip()


def installed() -> bool:
    return R2E.exists()


class Rss2Email:
    """One rss2email setup (config + data file) in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "r2e.cfg"
        self.data = workdir / "r2e.json"
        # Its run lock lives in XDG_RUNTIME_DIR; a private one keeps parallel runs apart.
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(workdir)}

    def _r2e(self, *args: str) -> list[str]:
        return [str(R2E), "-c", str(self.config), "-d", str(self.data), *args]

    def setup(self, feed_urls: list[str]) -> None:
        subprocess.run(self._r2e("new", "desk@example.invalid"), env=self.env, check=True,
                       capture_output=True)
        listing = self.workdir / "feeds.json"
        listing.write_text(json.dumps([[f"feed-{i}", u] for i, u in enumerate(feed_urls)]))
        subprocess.run([str(VENV / "bin" / "python"), "-c", _ADD_FEEDS, str(self.config),
                        str(self.data), str(listing)], env=self.env, check=True)

    def run(self) -> dict[str, Any]:
        """`r2e run --no-send` once: wall and CPU seconds, peak RSS, entries it has seen."""
        log = self.workdir / "r2e-run.log"
        with log.open("wb") as stderr:  # a file: a pipe read afterwards would fill and block
            started = time.perf_counter()
            process = subprocess.Popen(self._r2e("run", "--no-send"), env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=stderr)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        errors = log.read_text(encoding="utf-8", errors="replace").strip()
        if process.returncode != 0:
            raise RuntimeError(f"r2e run failed ({process.returncode}): {errors[-500:]}")
        return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024, "seen": self.seen(),
                "warnings": len(errors.splitlines())}

    def seen(self) -> int:
        """Entries rss2email has recorded as processed, over all feeds."""
        data = json.loads(self.data.read_text(encoding="utf-8"))
        return sum(len(feed.get("seen", {})) for feed in data.get("feeds", []))
