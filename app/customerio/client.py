"""The Track API client: one aiohttp session, Basic auth, never follows redirects.

Every call returns an :class:`~app.customerio.classify.HttpAnswer` (any status) or a
:class:`~app.customerio.classify.TransportFailure` (no answer: refused, dropped, timed out);
it never raises for those, so the caller's policy (:func:`~app.customerio.classify.classify`)
sees every outcome in one place. Redirects are not followed: a 3xx from the US host means an EU
workspace (SPEC §6) and is a configuration error, not something to chase.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from app.customerio.classify import HttpAnswer, TransportFailure

if TYPE_CHECKING:
    from pydantic import SecretStr

    from app.customerio.ratelimit import RateLimiter

BATCH_PATH = "/api/v2/batch"
AUTH_PATH = "/auth"


class TrackClient:
    def __init__(
        self,
        base_url: str,
        site_id: str,
        api_key: SecretStr,
        *,
        timeout_seconds: float,
        limiter: RateLimiter,
        max_connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._authorization = aiohttp.encode_basic_auth(site_id, api_key.get_secret_value())
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._limiter = limiter
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TrackClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            headers={
                "Authorization": self._authorization,
                "Content-Type": "application/json",
                "User-Agent": "mpcio",
            },
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_batch(self, body: bytes) -> HttpAnswer | TransportFailure:
        """POST one v2 batch body (after waiting for a rate-limit slot)."""
        await self._limiter.acquire()
        return await self._request("POST", BATCH_PATH, body)

    async def check_auth(self) -> HttpAnswer | TransportFailure:
        """GET /auth: 200 when the site id and API key are valid for this region's host."""
        return await self._request("GET", AUTH_PATH, None)

    async def _request(
        self, method: str, path: str, body: bytes | None
    ) -> HttpAnswer | TransportFailure:
        if self._session is None:
            raise RuntimeError("TrackClient used outside 'async with'")
        try:
            async with self._session.request(
                method, self.base_url + path, data=body, allow_redirects=False
            ) as response:
                content = await response.read()
                return HttpAnswer(response.status, content, dict(response.headers))
        except TimeoutError as exc:
            return TransportFailure("timeout", repr(exc))
        except aiohttp.ClientError as exc:
            return TransportFailure("connection", repr(exc))
        except asyncio.CancelledError:
            raise
