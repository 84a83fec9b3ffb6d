"""`make bench`: run every benchmark and write `results.json` and `results.md`.

    python -m benchmarks                 # everything, writes benchmarks/results.{json,md}
    python -m benchmarks --quick --out DIR   # seconds-long smoke run of the harness
    python -m benchmarks --only cold_ingest latency

Every figure is a median with its spread (max - min) over its runs; ratios against
rss2email are taken between neighbouring runs on the same server. A benchmark that fails
is reported as failed (and the exit status is 1); the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import pipeline, rss2email

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTES = HERE / "notes.md"

# Benchmarks written with the stages they measure (issues 3 and 4), integrated here.
EXTERNAL = {
    "match_scale": ("Matching scale", "issue 3"),
    "story_scale": ("Story lookup scale", "issue 4"),
}
ORDER = ["cold_ingest", "profile", "steady_cycle", "latency", "match_scale", "story_scale",
         "memory"]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    load = os.getloadavg()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 ** 2, 1),
            "os": platform.platform(), "python": platform.python_version(),
            "load_at_start": [round(x, 2) for x in load]}


def versions(with_r2e: bool) -> dict[str, str]:
    out = {}
    for dist in ("monitor", "httpx", "httpx-aiohttp", "aiohttp", "feedparser", "sqlalchemy",
                 "hazm", "apscheduler", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    out["sqlite"] = sqlite3.sqlite_version
    if with_r2e:
        out["rss2email"] = rss2email.version().removeprefix("rss2email ")
    return out


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "monitor",
                "benchmarks", "migrations")
    return commit + (" (with uncommitted changes)" if dirty else "")


def external(name: str, quick: bool) -> dict[str, Any]:
    title, issue = EXTERNAL[name]
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"benchmarks.{name}":
            raise
        return {"name": name, "title": title, "figures": [], "target": None, "met": None,
                "notes": [f"not yet available: benchmarks/{name}.py ({issue}) is not on "
                          "this branch yet"]}
    result = dict(module.run(quick=quick))
    # Their "name" is a display name; the runner keys results by module.
    result["title"] = result.get("title") or title
    result["name"] = name
    return result


def run_all(quick: bool, only: list[str] | None) -> dict[str, Any]:
    sizes = pipeline.QUICK if quick else pipeline.Sizes()
    # Quick mode never installs anything; a full run installs rss2email in its own venv.
    with_r2e = rss2email.installed() if quick else bool(rss2email.ensure_installed())
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "cold_ingest": lambda: pipeline.cold_ingest(sizes, with_r2e),
        "profile": lambda: pipeline.profile(sizes),
        "steady_cycle": lambda: pipeline.steady_cycle(sizes, with_r2e),
        "latency": lambda: pipeline.latency(sizes),
        "match_scale": lambda: external("match_scale", quick),
        "story_scale": lambda: external("story_scale", quick),
        "memory": lambda: pipeline.memory(sizes),
    }
    if not sizes.profile:
        jobs.pop("profile")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench" if not quick else "python -m benchmarks --quick",
        "commit": git_commit(), "quick": quick, "machine": machine(),
        "versions": versions(with_r2e), "benchmarks": []}
    started = time.monotonic()
    for name in ORDER:
        if name not in jobs or (only and name not in only):
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            result = jobs[name]()
        except Exception as exc:
            traceback.print_exc()
            result = {"name": name, "title": name, "figures": [], "target": None,
                      "met": None, "error": f"{type(exc).__name__}: {exc}"}
        result["elapsed_s"] = round(time.monotonic() - t0, 1)
        print(f"bench: {name} done in {result['elapsed_s']} s", file=sys.stderr, flush=True)
        results["benchmarks"].append(result)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    return results


# --- results.md --------------------------------------------------------------------------

def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _met(value: Any) -> str:
    return {True: "met", False: "**not met**", None: "–"}.get(value, str(value))


_STANDARD_KEYS = {"name", "title", "figures", "target", "met", "notes", "elapsed_s", "error",
                  "profile", "profile_304_cycle", "raw"}


def render(results: dict[str, Any]) -> str:
    m, lines = results["machine"], []
    lines += [
        "# Benchmark results",
        "",
        f"Written by `{results['command']}` on {results['date']} at commit "
        f"`{results['commit']}`; the whole run took {results['elapsed_s'] / 60:.1f} min.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, "
        f"Python {m['python']}; load average at start {m['load_at_start']} (shared machine: "
        "absolute times drift, ratios are taken between neighbouring runs).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
        "Figures are medians; *spread* is max − min over the runs listed.",
        "",
        "## Summary",
        "",
        "| benchmark | target | result |",
        "|---|---|---|",
    ]
    for bench in results["benchmarks"]:
        status = "failed: " + bench["error"] if bench.get("error") else _met(bench.get("met"))
        if not bench.get("target") and not bench.get("error"):
            notes = _notes(bench) or [""]
            status = notes[0] if notes[0].startswith("not yet available") else "see below"
        lines.append(f"| {bench['title']} | {bench.get('target') or '–'} | {status} |")
    for bench in results["benchmarks"]:
        lines += ["", f"## {bench['title']}", ""]
        if bench.get("error"):
            lines += [f"Failed: `{bench['error']}`", ""]
        if bench.get("figures"):
            lines += ["| figure | median | spread | runs |", "|---|---|---|---|"]
            for fig in bench["figures"]:
                runs = fig.get("runs") or []
                if isinstance(runs, list):  # the modules of issues 3 and 4 give a count
                    runs = f"{len(runs)}: " + ", ".join(_num(r) for r in runs[:8]) + (
                        " …" if len(runs) > 8 else "")
                lines.append(f"| {fig['name']} | {_num(fig.get('median'))} {fig['unit']} | "
                             f"{_num(fig.get('spread'))} | {runs} |")
            lines.append("")
        extra = {k: v for k, v in bench.items() if k not in _STANDARD_KEYS}
        for key, value in extra.items():
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) \
                else _num(value)
            lines.append(f"- {key}: {shown}")
        if bench.get("target"):
            lines.append(f"- target: {bench['target']} — {_met(bench.get('met'))}")
        for note in _notes(bench):
            lines.append(f"- {note}")
        if bench.get("profile"):
            lines += _render_profile("the cold ingest", bench["profile"])
        if bench.get("profile_304_cycle"):
            lines += _render_profile("a cycle where every feed answers 304",
                                     bench["profile_304_cycle"])
        if bench.get("raw"):
            lines.append("- raw collapsed stacks: " + ", ".join(f"`{r}`" for r in bench["raw"]))
        lines.append(f"- took {bench.get('elapsed_s', 0):.0f} s")
    if NOTES.exists() and not results["quick"]:
        lines += ["", NOTES.read_text(encoding="utf-8").strip()]
    return "\n".join(lines) + "\n"


def _notes(bench: dict[str, Any]) -> list[str]:
    notes = bench.get("notes") or []
    return [notes] if isinstance(notes, str) else list(notes)


def _render_profile(what: str, summary: dict[str, Any]) -> list[str]:
    lines = ["", f"Where the time goes in {what}, by stage (share of samples):", "",
             "| stage | share |", "|---|---|"]
    lines += [f"| {stage} | {share:.0%} |" for stage, share in summary["stages"].items()]
    lines += ["", "Monitor functions (library time charged to the monitor function that called "
              "it):", "", "| function | share |", "|---|---|"]
    lines += [f"| `{h['function']}` | {h['share']:.0%} |" for h in summary["monitor_functions"]]
    lines += ["", "Hottest functions (self time):", "", "| function | share |", "|---|---|"]
    lines += [f"| `{h['function']}` | {h['share']:.1%} |" for h in summary["hottest"]]
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one run each: checks the harness in seconds")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where results.json and results.md go (default: benchmarks/)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results.md from results.json (after editing notes.md)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        results = json.loads((args.out / "results.json").read_text(encoding="utf-8"))
    else:
        results = run_all(args.quick, args.only)
        (args.out / "results.json").write_text(
            json.dumps(results, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (args.out / "results.md").write_text(render(results), encoding="utf-8")
    print(render(results))
    return 1 if any(b.get("error") for b in results["benchmarks"]) else 0
