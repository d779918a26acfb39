"""Runs last (file order): no worker log of this test session holds an API key or an email.

Every integration test that starts a worker registers its log (``WorkerProcess.LOGS``); the
secrets are the ones the tests configure (tests/integration/conftest.py and friends).
"""

from __future__ import annotations

import re

import pytest

from tests.integration.conftest import API_KEY
from tests.integration.support import WorkerProcess
from tests.integration.test_secure_kafka import PASSWORD

pytestmark = pytest.mark.integration

SECRETS = (API_KEY, "wrong-key", "demo-key", PASSWORD, "admin-s3cret")
EMAIL = re.compile(rb"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def test_no_api_key_or_raw_email_in_any_worker_log() -> None:
    logs = [path for path in WorkerProcess.LOGS if path.exists()]
    if not logs:
        pytest.skip("no worker ran in this session (run with the other integration tests)")
    findings = []
    for path in logs:
        text = path.read_bytes()
        findings += [f"{path}: secret {s!r}" for s in SECRETS if s.encode() in text]
        findings += [f"{path}: email {m.group(0)[:3]!r}..." for m in EMAIL.finditer(text)]
    assert not findings, "\n".join(findings[:20])
    assert len(logs) >= 10  # the check really read the session's workers
