"""sigmasight-batch: the nightly portfolio-risk batch worker (the shell: CLI, settings, I/O)."""

__version__ = "0.1.0"
