"""The options the pure core reads: a small frozen object, built once from the settings.

:func:`app.wiring.core_options` builds it from :class:`~app.settings.Settings`; the core never
imports the settings (nor pydantic). Field meanings are those of the ``MPCIO_*`` settings of
the same names (README, "Configuration").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CoreOptions:
    """What the mapping reads (SPEC §3-§4).

    ``environments``: the mParticle environments forwarded (``production``, ``development``);
    ``include_user_attributes`` / ``send_created_at``: what an identify carries;
    ``resubscribe_on_opt_in``: whether an opt-in after an opt-out sends ``unsubscribed: false``;
    ``one_attribute_per_audience``: one boolean attribute per audience beside
    ``SegmentMembership``.
    """

    environments: frozenset[str]
    include_user_attributes: bool
    send_created_at: bool
    resubscribe_on_opt_in: bool
    one_attribute_per_audience: bool
