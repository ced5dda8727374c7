"""``python -m distnn``: the ``distnn`` command."""
import sys

from .cli import main

sys.exit(main())
