"""``python -m experiments ...`` is the same as ``speechxfer ...``."""

import sys

from experiments.cli import main

sys.exit(main())
