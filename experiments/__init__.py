"""Experiment entry points: the ``speechxfer`` CLI, YAML configs, sweeps, reports and SLURM templates."""
