"""Fixtures shared by the unit tests that talk to an in-process Customer.io emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from app.dev.emulator import EmulatorConfig, RunningEmulator, running_emulator

SITE_ID, API_KEY = "site-1", "key-1"


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig(SITE_ID, API_KEY)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
