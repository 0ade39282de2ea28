"""Flower apps, the checked FedAvg strategy, the server's state, record conversions, deployment."""
