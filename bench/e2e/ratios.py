"""Every contender against a reference contender (the faust pass-through ceiling) of one run.

``python -m bench.e2e.ratios bench/results/e2e-<stamp>.json [--reference ceiling]`` prints the
table :func:`bench.e2e.__main__.print_tables` prints at the end of a run, from its JSON.

Per run *r*: a contender's events/s over the reference's events/s in run *r* (the same round
of the round-robin, so both saw about the same machine), and its CPU s per 1,000 events over
the reference's. Median: the ratio of the two medians over all runs. Issue 19's target is
events/s at least 0.5x and CPU at most 2x the ceiling's (:data:`TARGET`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: issue 19: at least this share of the ceiling's events/s, at most this multiple of its CPU
TARGET = (0.5, 2.0)


@dataclass(frozen=True)
class Ratio:
    """One contender against the reference: ``runs`` maps run number → (events/s ratio, CPU
    ratio); ``median`` is (median events/s ratio, median CPU ratio) as ratios of medians."""

    runs: dict[int, tuple[float, float]]
    median: tuple[float, float]

    @property
    def meets_target(self) -> bool:
        speed, cpu = self.median
        return speed >= TARGET[0] and cpu <= TARGET[1]


def _measured(rows: list[dict[str, Any]], contender: str, phase: str) -> dict[int, dict[str, Any]]:
    return {
        r["run"]: r
        for r in rows
        if r.get("contender") == contender
        and r.get("phase") == phase
        and "error" not in r
        and r.get("events_per_s")
        and r.get("cpu_s_per_1000_events")
    }


def ratios(
    rows: list[dict[str, Any]], reference: str = "ceiling", phase: str = "throughput"
) -> dict[str, Ratio]:
    """Each contender of ``rows`` (the benchmark's per-run JSON objects) but the reference,
    against the reference in ``phase``. Runs that failed or lack a figure are left out, on
    either side; a contender with no run left, or no reference run at all, is left out.
    Pure; contenders in first-seen order."""
    base = _measured(rows, reference, phase)
    if not base:
        return {}
    base_speed = statistics.median(r["events_per_s"] for r in base.values())
    base_cpu = statistics.median(r["cpu_s_per_1000_events"] for r in base.values())
    out: dict[str, Ratio] = {}
    for contender in dict.fromkeys(r.get("contender") for r in rows):
        if not isinstance(contender, str) or contender == reference:
            continue
        mine = _measured(rows, contender, phase)
        if not mine:
            continue
        runs = {
            run: (
                r["events_per_s"] / base[run]["events_per_s"],
                r["cpu_s_per_1000_events"] / base[run]["cpu_s_per_1000_events"],
            )
            for run, r in sorted(mine.items())
            if run in base
        }
        speed = statistics.median(r["events_per_s"] for r in mine.values()) / base_speed
        cpu = statistics.median(r["cpu_s_per_1000_events"] for r in mine.values()) / base_cpu
        out[contender] = Ratio(runs, (speed, cpu))
    return out


def format_ratios(table: dict[str, Ratio], reference: str = "ceiling") -> str:
    """The printed table: one line per contender, ``events/s ratio / CPU ratio`` per run and
    for the medians, and whether the medians meet :data:`TARGET`."""
    if not table:
        return f"(no {reference} runs to compare with)"
    runs = sorted({run for ratio in table.values() for run in ratio.runs})
    title = (
        f"Against the {reference}, same run (events/s ratio / CPU s per 1k events ratio; "
        f"median = ratio of the medians; target >= {TARGET[0]}x events/s, <= {TARGET[1]}x CPU)"
    )
    lines = [title]
    header = f"{'contender':<20}" + "".join(f"{'run ' + str(r):>15}" for r in runs)
    header += f"{'median':>15}  target"
    lines += [header, "-" * len(header)]
    for contender, ratio in table.items():
        cells = "".join(f"{_pair(ratio.runs[r]) if r in ratio.runs else '-':>15}" for r in runs)
        met = "met" if ratio.meets_target else "not met"
        lines.append(f"{contender:<20}{cells}{_pair(ratio.median):>15}  {met}")
    return "\n".join(lines)


def _pair(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f}x / {pair[1]:.2f}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e.ratios", description=__doc__)
    parser.add_argument("results", type=Path, help="a bench/results/e2e-<stamp>.json")
    parser.add_argument("--reference", default="ceiling", help="the contender to divide by")
    parser.add_argument("--phase", default="throughput", help="throughput or limited")
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text(encoding="utf-8"))
    print(format_ratios(ratios(rows, args.reference, args.phase), args.reference))


if __name__ == "__main__":
    main()
