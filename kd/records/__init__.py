"""What runs leave behind: checkpoints, resume states and locks, result lines, provenance, progress logs."""
