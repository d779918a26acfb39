"""Topic configuration of the table changelogs (``<app id>-users-changelog``, ...).

Kafka compacts only closed segments, and by default a segment closes at 1 GiB or after 7 days:
at ~250 bytes per user state a partition would need millions of updates before its first
segment closed, so every update stayed in the changelog and recovery grew with updates, not
users. The settings below (``MPCIO_CHANGELOG_*``) close segments at a size and age that let the
log cleaner keep each changelog near one record per live key.

faust creates the changelog topics with these configs (``Table(extra_topic_configs=...)``);
:func:`app.restore.align_changelog_configs` applies them to changelogs that already exist
(topics created before these settings, or with other values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Kafka topic configs of every changelog topic, as Kafka's names and string values.

    ``cleanup.policy`` is ``compact`` (faust's default for tables, stated here so altering an
    existing topic keeps it); times are converted from the settings' seconds to ms.
    """
    return {
        "cleanup.policy": "compact",
        "segment.bytes": str(settings.changelog_segment_bytes),
        "segment.ms": str(settings.changelog_segment_seconds * 1000),
        "min.cleanable.dirty.ratio": repr(settings.changelog_min_cleanable_dirty_ratio),
        "delete.retention.ms": str(settings.changelog_delete_retention_seconds * 1000),
    }
