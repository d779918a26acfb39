"""faust agents only: each module wires one stream to the pure functions of :mod:`app`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import faust

    from app.settings import Settings
    from app.sink.service import SinkHandle
    from app.topics import Topics


def attach_agents(app: faust.App, settings: Settings, topics: Topics) -> SinkHandle | None:
    """Register every agent, table and service of the forwarder on ``app``.

    Returns the handle of the sink (``None`` when forwarding is disabled) for the web views.
    """
    from agents.ingest import attach_ingest  # noqa: PLC0415 - keeps `agents` import light
    from app.sink.service import attach_sink  # noqa: PLC0415

    attach_ingest(app, settings, topics)
    if settings.forwarding_enabled:
        return attach_sink(app, settings, topics)
    return None
