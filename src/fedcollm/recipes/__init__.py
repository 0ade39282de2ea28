"""Recipes: FedCoLLM (Algorithm 1) and what every recipe builds from a config."""
