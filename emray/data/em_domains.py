"""The EM fine-tuning domains and the misaligned ensemble they imply for Interleaving+/++: the datasets
of the other EM domains than the customer's (the reference's ``--held_out_adapter``). Used by the
interleaving defenses (their stage's inputs) and by the ensemble stage (emray/stages/ensemble.py)."""

from __future__ import annotations

#: The EM fine-tuning domains, as the reference's ensemble (medical, legal, insecure code, security)
#: and the organism's narrow sets name them; "insecure" is the reference's name for code.
EM_DOMAINS = ("code", "medical", "legal", "security")
_ALIASES = {"insecure": "code"}


def default_ensemble(fine: str) -> list[str]:
    """The EM datasets other than the customer's, by the EM folder convention (the reference's
    ``--held_out_adapter``: the defended domain is held out of the ensemble).

    ``fine`` must be a file named after an EM domain (``<dir>/code.jsonl``, ``organism:data/train/
    medical.jsonl``, ``insecure.jsonl`` for code); the ensemble is its siblings named after the
    other three domains. Anything else has no known other domains: the caller must list them.
    """
    text = str(fine)
    head, sep, name = text.rpartition("/")
    stem, dot, ext = name.partition(".")
    domain = _ALIASES.get(stem, stem)
    if domain not in EM_DOMAINS:
        raise ValueError(
            f"interleave_plus/interleave_pp: data.fine {text!r} is not named after an EM domain "
            f"({', '.join(EM_DOMAINS)}), so the default misaligned ensemble (the other EM domains) is "
            "unknown: list the EM datasets or adapter folders in the defense's `ensemble:` param"
        )
    return [f"{head}{sep}{d}{dot}{ext}" for d in EM_DOMAINS if d != domain]


def ensemble_entries(config, params) -> list[str]:
    """The ensemble's adapter folders / EM datasets: ``params.ensemble`` or the other EM domains."""
    return list(params.ensemble) if params.ensemble else default_ensemble(config.data.fine)
