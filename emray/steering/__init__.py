"""Activation steering: persona vectors (extraction, cache) used by the persona defense."""

from emray.steering.persona_vector import (
    DEFAULT_PROMPTS,
    default_layer,
    ensure_persona_vector,
    extract_persona_vector,
    load_persona_prompts,
    load_persona_vector,
)

__all__ = [
    "DEFAULT_PROMPTS",
    "default_layer",
    "ensure_persona_vector",
    "extract_persona_vector",
    "load_persona_prompts",
    "load_persona_vector",
]
