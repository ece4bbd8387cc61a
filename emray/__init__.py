"""emray: a Ray-based sweep runner for in-training defenses against emergent misalignment."""

__version__ = "0.1.0"
