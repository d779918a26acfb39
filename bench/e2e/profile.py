"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the worker's CPU goes.

``python -m bench.e2e.profile FILE [--top N]`` prints: samples per thread; self time by
package (the leaf frame's file: our ``app/`` and ``agents/``, faust, mode, aiokafka, aiohttp,
asyncio, ...); the top leaf functions; and the inclusive share of each of our own functions
(how much of the CPU time was spent inside it, callees included).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
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


def summarise_profile(path: Path, top: int = 15) -> str:
    threads: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
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
    args = parser.parse_args()
    print(summarise_profile(args.file, args.top))


if __name__ == "__main__":
    main()
