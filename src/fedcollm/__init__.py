"""FedCoLLM: federated co-tuning of a server LLM and client SLMs.

Rooms: ``models`` (load bases, LoRA adapters), ``data`` (datasets, prompts, partitions), ``losses``,
``train`` (the one loop), ``evaluate`` (the multiple-choice scorer), ``federation`` (Flower apps),
``recipes`` (FedCoLLM and baselines), ``cli``.
"""

__version__ = "0.1.0"
