"""Operator commands: replay, dead letters, check-config, dry-run, metrics-check."""
