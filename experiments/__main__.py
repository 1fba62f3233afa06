"""``python -m experiments ...`` is the same as ``speechxfer ...``."""

import sys

from experiments.entry import main

sys.exit(main())
