"""The pure ingest step over the end-to-end workload, with a state store: µs per record.

Run: ``.venv/bin/python -m bench.ingest_step [--repeat 5] [--users 4000]``.
Each repetition feeds every record of :func:`bench.e2e.workload.generate` (default shape:
4,000 users x 5 batches of 5 events, each round in a shuffled order, so a user is revisited
after ~4,000 other records) through :func:`app.core.pipeline.process_batch_record`, reading
and writing the users' states in a dict (as the ``users`` table does), starting from an empty
store, and looking each batch's identities up in an empty dict of identity markers (as the
``erasures`` table is read: :func:`app.core.pipeline._erased_by_identity`). It prints the CPU
time of this process (``time.process_time``) per record of each repetition and the best and
median: the step's cost without faust, Kafka or the event loop,
to compare two trees of the code (run it from each) on the same machine in the same session.
A busy machine inflates the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

from app.core.options import CoreOptions
from app.core.pipeline import process_batch_record
from app.records import SourcePosition
from app.settings import Settings
from app.wiring import core_options
from bench.e2e.workload import Shape, generate

SENT_AT_MS = 1_700_000_000_000


def one_pass(records: list[tuple[bytes, bytes]], options: CoreOptions) -> float:
    """CPU seconds to process ``records`` (key, value) once, from an empty store."""
    store: dict[str, bytes] = {}
    markers: dict[str, int] = {}
    started = time.process_time()
    for offset, (key, value) in enumerate(records):
        source = SourcePosition("mparticle-batches", 0, offset)
        result = process_batch_record(
            key, value, source, store.get, options, identity_erased_at=markers.get
        )
        store.update(result.states)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--users", type=int, default=4000)
    args = parser.parse_args()
    shape = Shape(users=args.users)
    records = [
        (record.key, record.encode(SENT_AT_MS, "bench"))
        for record in generate(shape, t0_ms=SENT_AT_MS - 3_600_000)
    ]
    options = core_options(Settings(forwarding_enabled=False))
    figures = []
    for run in range(args.repeat):
        micros = one_pass(records, options) / len(records) * 1e6
        figures.append(micros)
        print(f"run {run + 1}: {micros:7.2f} µs/record ({len(records)} records)", flush=True)
    print(f"best {min(figures):.2f} µs/record, median {statistics.median(figures):.2f}")


if __name__ == "__main__":
    main()
