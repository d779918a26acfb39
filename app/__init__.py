"""mpcio: a self-hosted mParticle → Customer.io stream forwarder."""

__version__ = "0.1.0"
