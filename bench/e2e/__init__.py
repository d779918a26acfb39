"""End-to-end benchmark: see bench/e2e/README.md."""
