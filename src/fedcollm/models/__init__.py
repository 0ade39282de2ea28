"""Models: where base models come from (``sources``, ``offline``) and their LoRA adapters (``lora``)."""
