"""LoRA fine-tuning with defenses (TRL SFTTrainer), and its Ray Train worker."""
