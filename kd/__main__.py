"""`python -m kd ...` (and `torchrun --nproc_per_node N -m kd run CELL ...`): the kd command line."""
import sys

from kd.cli import main

sys.exit(main())
