"""The one exception type a user sees: the CLI prints its message as one line and exits 2."""


class KDError(Exception):
    """A user-facing error: bad names, malformed YAML, missing data, bad checkpoints, failed runs."""
