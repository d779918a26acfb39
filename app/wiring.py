"""The one place that builds things from :class:`~app.settings.Settings`.

- :func:`core_options`: the frozen :class:`~app.core.options.CoreOptions` the pure core reads
  (the core never sees ``Settings``);
- :func:`retry_policy`, :func:`rate_limiter`, :func:`track_client`: the Customer.io client
  and its retry and rate-limit policy, for the sink and ``mpcio check-config``;
- :func:`settings_as_env`: the ``MPCIO_*`` variables that reproduce settings in a child
  process (the demo's worker and ingress).

The secret values every logger, view and printer redacts are
:meth:`Settings.secret_values <app.settings.Settings.secret_values>` (used through
:func:`app.masking.masker_for`). Building never does I/O: the client opens its connection pool
in ``async with``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.core.options import CoreOptions
from app.customerio.client import TrackClient
from app.customerio.delivery import RetryPolicy
from app.customerio.ratelimit import RateLimiter
from app.errors import ConfigError
from app.settings import SECRET_FIELDS

if TYPE_CHECKING:
    from app.settings import Settings


def core_options(settings: Settings) -> CoreOptions:
    """The mapping options of ``settings`` (SPEC §3-§4: environments forwarded and the
    identify's optional content)."""
    return CoreOptions(
        environments=frozenset(str(environment) for environment in settings.environments),
        include_user_attributes=settings.include_user_attributes,
        send_created_at=settings.send_created_at,
        resubscribe_on_opt_in=settings.resubscribe_on_opt_in,
        one_attribute_per_audience=settings.one_attribute_per_audience,
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    """Attempts, seconds and back-off of one request's retries (``MPCIO_RETRY_*``)."""
    return RetryPolicy(
        max_attempts=settings.retry_max_attempts,
        max_seconds=settings.retry_max_seconds,
        initial_backoff=settings.retry_backoff_initial_seconds,
        max_backoff=settings.retry_backoff_max_seconds,
    )


def rate_limiter(settings: Settings) -> RateLimiter:
    """A limiter at the workspace's whole request rate (the sink narrows it to its share)."""
    return RateLimiter(settings.rate_limit_per_second)


def track_client(settings: Settings, limiter: RateLimiter, *, max_connections: int) -> TrackClient:
    """The Track API client of ``settings``' workspace and region (not opened yet).

    Raises :class:`~app.errors.ConfigError` without credentials (``Settings`` requires them
    whenever forwarding is enabled, so only a caller that skipped that check sees it)."""
    site_id, api_key = settings.customerio_site_id, settings.customerio_api_key
    if site_id is None or api_key is None:
        raise ConfigError("MPCIO_CUSTOMERIO_SITE_ID and MPCIO_CUSTOMERIO_API_KEY are required")
    return TrackClient(
        settings.customerio_base_url,
        site_id,
        api_key,
        timeout_seconds=settings.request_timeout_seconds,
        limiter=limiter,
        max_connections=max_connections,
    )


def settings_as_env(settings: Settings, *, changed_only: bool = False) -> dict[str, str]:
    """``MPCIO_*`` variables that reproduce ``settings`` in a child process (secrets included);
    ``changed_only``: only the settings that differ from their defaults."""
    env: dict[str, str] = {}
    dumped = settings.model_dump(mode="json", exclude_defaults=changed_only)
    for name in sorted(SECRET_FIELDS & dumped.keys()):
        secret = getattr(settings, name)
        if secret is not None:
            dumped[name] = secret.get_secret_value()
    for name, value in dumped.items():
        if value is None:
            continue
        text = ",".join(sorted(value)) if isinstance(value, list) else str(value)
        env[f"MPCIO_{name.upper()}"] = text.lower() if isinstance(value, bool) else text
    return env
