"""Flower apps, the checked FedAvg strategy, the server's state, record conversions, deployment."""


class DeployError(RuntimeError):
    """Flower's processes could not start or finish a run (port taken, node refused, run failed or timed out).

    Here, not in ``deploy``, so that the CLI can name it without importing Flower. It is printed as one
    line; finished rounds stay in the run folder.
    """
