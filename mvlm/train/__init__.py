"""Training: LLaVA's arguments, the training policy, the Trainer subclass, and the entry point."""
