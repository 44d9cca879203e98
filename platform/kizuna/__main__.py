"""``python -m kizuna`` runs the ``kizuna`` command."""

from kizuna.cli import main

main()
