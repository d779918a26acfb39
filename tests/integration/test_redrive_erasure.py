"""A redrive never brings back a person erased after the dead letter was written (privacy).

The breaker's sequence, on the real broker and the emulator: Customer.io answers 503 to
everything, so a user's identify and event are dead-lettered ``retries_exhausted``; the user is
then erased; ``mpcio deadletter redrive`` must not send them back (before the fix it said
"2 sent" and the person was back with the old attributes). A user who was not erased is
redriven in the same command and arrives: the skip is about the erasure, not the redrive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import pytest

from app.dev.emulator.faults import parse_faults
from app.records import SourcePosition, Stage, dead_letter
from tests.integration.cli import mpcio
from tests.integration.support import (
    committed_records,
    dead_letter_reasons,
    poll,
    produce,
    wait_for,
)

if TYPE_CHECKING:
    from app.dev.emulator.server import RunningEmulator
    from tests.integration.conftest import Deployment

pytestmark = pytest.mark.integration

T = 1_764_400_000_000


def _batch(mpid: int) -> tuple[bytes, bytes]:
    return str(mpid).encode(), orjson.dumps(
        {
            "mpid": mpid,
            "timestamp_unixtime_ms": T,
            "user_identities": {"email": f"gdpr{mpid}@example.com"},
            "user_attributes": {"secret_note": "pre-erasure PII"},
            "events": [
                {
                    "event_type": "custom_event",
                    "data": {"event_name": "Signed", "source_message_id": f"{mpid}-1"},
                }
            ],
        }
    )


async def test_redrive_does_not_recreate_a_person_erased_after_the_dead_letter(
    deployment: Deployment, emulator: RunningEmulator
) -> None:
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    unavailable, _ = parse_faults({"kind": "status", "status": 503, "count": None})
    emulator.faults.add(unavailable)
    worker = deployment.start_worker(retry_max_attempts="2")
    await produce(kafka, topics.batches.name, [_batch(700), _batch(701)])

    async def four_dead_letters() -> bool:
        return len(await dead_letter_reasons(kafka, topics.deadletter.name)) >= 4

    await poll(four_dead_letters, 120, "identify + event of 700 and 701 dead-lettered", worker)
    assert set(await dead_letter_reasons(kafka, topics.deadletter.name)) == {"retries_exhausted"}

    emulator.faults.clear()
    store = emulator.state.store
    await produce(
        kafka,
        topics.erasure.name,
        [(b"700", orjson.dumps({"subject_request_type": "erasure", "mpid": 700}))],
    )
    # the erasure's delete (of a person Customer.io never had) comes after its marker's write
    await wait_for(lambda: store.unresolved_operations >= 1, 120, "the erasure's delete")
    assert store.find(("email", "gdpr700@example.com")) is None

    redriven = await mpcio(
        "deadletter", "redrive", "--reason", "retries_exhausted", env=deployment.env
    )
    assert redriven.code == 0, redriven.both
    assert "2 sent, 2 skipped (2 of them: user erased after it)" in redriven.err, redriven.both
    skips = [line for line in redriven.out.splitlines() if line.startswith("skip")]
    assert len(skips) == 2
    assert all(": erased: the user was erased at" in line for line in skips), skips
    assert not any("key=700" in line for line in skips)  # the erased user's mpid is masked
    assert "gdpr700" not in redriven.out

    # 701 (not erased) comes back from the same redrive; 700 does not, nor its event
    await wait_for(
        lambda: store.find(("email", "gdpr701@example.com")) is not None, 120, "701 redriven"
    )
    await wait_for(lambda: any(e.name == "Signed" for e in store.events), 60, "701's event")
    assert store.find(("email", "gdpr700@example.com")) is None
    assert {e.person_email for e in store.events} == {"gdpr701@example.com"}
    listed = await mpcio("deadletter", "list", env=deployment.env)
    assert "4 dead letter(s)" in listed.err  # the skipped ones stay where they were


async def test_an_ingest_redrive_keeps_the_input_records_kafka_time(
    deployment: Deployment,
) -> None:
    """The worker drops a batch whose Kafka time is not after its user's erasure: a redriven
    batch goes back with the time it first had, not the time of the redrive (no worker runs
    here: the record on the batches topic is what is checked)."""
    kafka, topics = deployment.kafka.bootstrap, deployment.topics
    first_seen = T - 3_600_000
    letter = dead_letter(
        "internal_error",
        "a bug, since fixed",
        stage=Stage.INGEST,
        source=SourcePosition(topics.batches.name, 1, 7, timestamp_ms=first_seen),
        key=b"702",
        payload=_batch(702)[1],
        failed_at_ms=T,
    )
    await produce(kafka, topics.deadletter.name, [(b"702", letter)])
    redriven = await mpcio(
        "deadletter", "redrive", "--reason", "internal_error", env=deployment.env
    )
    assert "redrive: 1 sent, 0 skipped" in redriven.err, redriven.both
    [record] = await committed_records(kafka, topics.batches.name)
    assert (record.key, record.timestamp) == (b"702", first_seen)
