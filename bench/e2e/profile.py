"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the worker's CPU goes.

``python -m bench.e2e.profile FILE [--top N]`` prints: samples per thread; self time by
package (the leaf frame's file: our ``app/`` and ``agents/``, faust, mode, aiokafka, aiohttp,
asyncio, ...); the top leaf functions; and the inclusive share of each of our own functions
(how much of the CPU time was spent inside it, callees included).

``python -m bench.e2e.profile A --cpu CA --against B --against-cpu CB`` compares two profiles
(e.g. the ``floor`` and ``floor-pipeline`` workers of one run): every function's inclusive
share in each, and, given each worker's CPU seconds per 1,000 events (``CA``, ``CB``), that
share as CPU s per 1,000 events and the difference, largest differences first. Shares are of
CPU-active samples (py-spy's default), so share times CPU per event is the function's CPU per event.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")
#: first path component (as py-spy prints it, relative to sys.path) -> package shown
PACKAGES = {
    "app": "ours: app/",
    "agents": "ours: agents/",
    "faust": "faust",
    "mode": "mode",
    "aiokafka": "aiokafka",
    "kafka": "aiokafka",
    "aiohttp": "aiohttp",
    "yarl": "aiohttp",
    "multidict": "aiohttp",
    "fastavro": "fastavro",
    "prometheus_client": "prometheus_client",
    "asyncio": "asyncio",
    "rocksdict": "rocksdict",
    "venusian": "faust",
    "orjson": "orjson",
}


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def package_of(path: str) -> str:
    """The package of a frame's file: py-spy shows paths relative to their sys.path entry."""
    if not path:
        return "native/other"
    first = path.replace("\\", "/").lstrip("/").split("/", 1)[0]
    return PACKAGES.get(first, "python/other")


def _ours(path: str) -> bool:
    return package_of(path).startswith("ours")


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """``(frames root first, sample count)`` of each line of a raw (collapsed) profile."""
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            yield stack.split(";"), int(count_text)


def inclusive_shares(path: Path) -> dict[str, float]:
    """Each function's inclusive share of a raw profile's samples (``func (file)``, any package;
    a function counted once per sample however deep it recurses). Empty for an empty profile."""
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(path):
        total += count
        names = set()
        for frame in frames:
            if frame.startswith(("process ", "thread ")):
                continue
            func, file = _parse(frame)
            names.add(f"{func} ({file})")
        for name in names:
            inclusive[name] += count
    return {name: count / total for name, count in inclusive.items()} if total else {}


def compare_profiles(first: tuple[Path, float], second: tuple[Path, float], top: int = 30) -> str:
    """Two profiles side by side: ``(raw profile, the worker's CPU s per 1,000 events)`` each;
    the ``top`` functions with the largest difference in CPU s per 1,000 events (inclusive
    share times CPU), second minus first."""
    (path_a, cpu_a), (path_b, cpu_b) = first, second
    shares_a, shares_b = inclusive_shares(path_a), inclusive_shares(path_b)
    rows = sorted(
        (
            (shares_b.get(name, 0.0) * cpu_b - shares_a.get(name, 0.0) * cpu_a, name)
            for name in shares_a.keys() | shares_b.keys()
        ),
        key=lambda row: -abs(row[0]),
    )[:top]
    out = [
        (
            f"# A = {path_a.name} ({cpu_a:.3f} CPU s / 1k ev), B = {path_b.name} "
            f"({cpu_b:.3f}); inclusive share and CPU s / 1k ev, by |B - A|"
        ),
        f"  {'share A':>8} {'share B':>8} {'cpu A':>7} {'cpu B':>7} {'B - A':>7}  function",
    ]
    for diff, name in rows:
        share_a, share_b = shares_a.get(name, 0.0), shares_b.get(name, 0.0)
        out.append(
            f"  {share_a:8.1%} {share_b:8.1%} {share_a * cpu_a:7.4f} {share_b * cpu_b:7.4f} "
            f"{diff:+7.4f}  {name}"
        )
    return "\n".join(out)


def summarise_profile(path: Path, top: int = 15) -> str:
    threads: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in _stacks(path):
        total += count
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        threads[
            thread.split(" (")[0] + " " + thread.split('"')[1] if '"' in thread else thread
        ] += count
        code = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not code:
            continue
        func, file = _parse(code[-1])
        by_package[package_of(file)] += count
        leaves[f"{func} ({file.rsplit('/', 2)[-1] if file else '?'})"] += count
        seen = set()
        for frame in code:
            func, file = _parse(frame)
            if _ours(file):
                name = f"{file}:{func}"
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
    if not total:
        return f"# profile {path}: no samples"
    out = [f"# profile {path} ({total} samples, CPU-active only)"]
    out.append(
        "  self time by package: "
        + ", ".join(f"{name} {count / total:.0%}" for name, count in by_package.most_common())
    )
    out.append("  top leaf functions (self):")
    out.extend(f"    {count / total:6.1%}  {name}" for name, count in leaves.most_common(top))
    out.append("  our functions, inclusive (callees included):")
    out.extend(f"    {count / total:6.1%}  {name}" for name, count in inclusive.most_common(top))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.profile", description=__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--cpu", type=float, default=1.0, help="FILE's CPU s / 1k events")
    parser.add_argument("--against", type=Path, help="a second raw profile to compare with")
    parser.add_argument("--against-cpu", type=float, default=1.0, help="its CPU s / 1k events")
    args = parser.parse_args()
    if args.against is None:
        print(summarise_profile(args.file, args.top))
    else:
        print(compare_profiles((args.file, args.cpu), (args.against, args.against_cpu), args.top))


if __name__ == "__main__":
    main()
