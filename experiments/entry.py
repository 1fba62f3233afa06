"""The ``speechxfer`` console entry point: catch SLURM's SIGUSR1 first, then import the CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from experiments.slurm_signal import install_early_handler


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):  # every command, one line each; no torch import
        from experiments.commands import overview

        print(overview())
        return 0 if args else 2
    install_early_handler()  # before torch/Lightning imports: a SIGUSR1 now must not kill the job
    from experiments.cli import main as cli_main

    return cli_main(argv)
