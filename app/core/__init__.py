"""Pure core of the data path (no I/O).

mParticle parsing, audiences, erasure, user state, mapping and the per-record pipeline.
"""
