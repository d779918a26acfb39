"""``mpcio ingress``: mParticle's Firehose messages in, audience and erasure records out.

mParticle delivers audience membership and data-subject requests to partners as Firehose
messages (never on its Kafka event output). This package accepts them by HTTP POST (usually
from a relay such as an AWS Lambda that mParticle invokes), checks the shared secret and the
published JSON schemas, and writes one record per user profile to the topics the worker
already consumes. :mod:`app.ingress.messages` is the pure part (what to write, what to
answer), :mod:`app.ingress.schemas` the validation, :mod:`app.ingress.server` the aiohttp
service and its Kafka producer.
"""
