"""Flower apps, the checked FedAvg strategy, the server's state, record conversions, deployment."""


class DeployError(RuntimeError):
    """Flower's processes could not start or finish a run (port taken, node refused, run failed or timed out).

    Here, not in ``deploy``, so that the CLI can name it without importing Flower. It is printed as one
    line; finished rounds stay in the run folder.
    """


class MissingProgram(RuntimeError):
    """A program a run starts (``flower-superlink``, ``flwr``) is not installed where fedcollm looks for it: the
    environment's problem, not the input's (its own exit code). One line naming the program and where it looked."""
