"""The RL scenario (``scenario: rl``): an SFT warm start, then GRPO on TRL's GRPOTrainer with defenses."""
