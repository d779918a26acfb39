"""Throughput ceiling of faust-streaming on the real local broker: ``python -m bench.ceiling``.

See ``README.md`` beside this file for the contenders, how to run them and the measured figures.
"""
