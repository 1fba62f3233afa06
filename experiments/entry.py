"""The ``speechxfer`` console entry point: catch SLURM's SIGUSR1 first, then import the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from experiments.slurm_signal import install_early_handler


def main(argv: Sequence[str] | None = None) -> int:
    install_early_handler()  # before torch/Lightning imports: a SIGUSR1 now must not kill the job
    from experiments.cli import main as cli_main

    return cli_main(argv)
