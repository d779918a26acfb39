"""The log-hygiene check (the autouse ``log_hygiene`` fixture) finds what it looks for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.integration.support import LOG_SECRETS, log_findings

if TYPE_CHECKING:
    from pathlib import Path


def test_findings_name_planted_secrets_and_emails_but_not_masked_ones(tmp_path: Path) -> None:
    clean = tmp_path / "clean.log"
    clean.write_text("delivered 3 items for mpid 42 (email a…@example.com masked)\n")
    dirty = tmp_path / "dirty.log"
    dirty.write_text(f"auth {LOG_SECRETS[0]} failed for Ada.Lovelace@example.com\n")

    findings = log_findings([clean, dirty, tmp_path / "never-written.log"])

    assert findings == [
        f"{dirty}: secret {LOG_SECRETS[0]!r}",
        f"{dirty}: email b'Ada'...",
    ]
