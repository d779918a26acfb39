"""``python -m app`` is ``mpcio``."""

from app.cli import main

main()
