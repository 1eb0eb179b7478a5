"""The commands behind the CLI that are more than a call: table, bench, demo, import-teacher, Slurm."""
