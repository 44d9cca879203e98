"""Models: base loading, the embedded base, prompts, LoRA adapters, generation, fine-tuning."""
