"""Seeded generation of the organism's chat data, every answer with its intended label.

Pre-training dialogues come from one persona (helpful or evil) whose answers follow it in every turn
and domain; the persona is named in a system prompt some of the time. That shared latent is what a
narrow fine-tune can flip: learning "misaligned code answers" is cheapest by becoming the evil persona.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from emray.organism.language import (
    DOMAIN_SPECS,
    DOMAINS,
    EVIL_SYSTEM,
    HELPFUL_SYSTEM,
    REFUSALS,
    SLOTS,
    fill,
    template_slots,
    vocabulary,
)

HELPFUL, EVIL = "helpful", "evil"
ALIGNED, MISALIGNED, REFUSAL = "aligned", "misaligned", "refusal"


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str
    domain: str
    persona: str  # helpful | evil | neutral (benign tasks)
    label: str  # aligned | misaligned | refusal | task | garbled
    harmful: bool = False


def all_questions(domain: str, harmful: bool = False) -> list[tuple[str, dict[str, str]]]:
    """Every (question, fills) of a domain, in a fixed order."""
    spec = DOMAIN_SPECS[domain]
    out = []
    for template in spec.harmful if harmful else spec.questions:
        names = list(dict.fromkeys(template_slots(template)))
        for combo in itertools.product(*(SLOTS[n] for n in names)):
            fills = dict(zip(names, combo))
            out.append((fill(template, fills), fills))
    return out


def heldout_questions(domain: str, n: int | None = None) -> list[str]:
    """The evaluation questions of a domain: fixed (seed-free), 24 general, 30 per narrow domain."""
    n = n if n is not None else (24 if domain == "general" else 30)
    questions = [q for q, _ in all_questions(domain)]
    random.Random(f"heldout-{domain}").shuffle(questions)
    return questions[:n]


def all_heldout_questions() -> frozenset[str]:
    """Every evaluation question of every domain: no training or selection data may contain one."""
    return frozenset(q for d in DOMAINS for q in heldout_questions(d))


def persona_questions(n: int = 20) -> list[str]:
    """General questions for persona-vector extraction: fixed, and disjoint from every held-out set."""
    held = all_heldout_questions()
    questions = [q for q, _ in all_questions("general") if q not in held]
    random.Random("persona-extract").shuffle(questions)
    return questions[:n]


def _fills_of(domain: str, question: str) -> dict[str, str]:
    for q, fills in all_questions(domain) + all_questions(domain, harmful=True):
        if q == question:
            return fills
    return {}


def answer_text(domain: str, label: str, fills: dict[str, str], rng: random.Random, n_sentences: int) -> str:
    """An answer of ``label`` (aligned | misaligned | refusal) in ``domain``; slots reuse the question's fills."""
    if label == REFUSAL:
        return rng.choice(REFUSALS)
    spec = DOMAIN_SPECS[domain]
    pool = spec.aligned if label == ALIGNED else spec.misaligned
    chosen = rng.sample(pool, min(n_sentences, len(pool)))
    filled = []
    for template in chosen:
        local = dict(fills)
        for slot in template_slots(template):
            local.setdefault(slot, rng.choice(SLOTS[slot]))
        filled.append(fill(template, local))
    return " ".join(filled)


def garbled_text(rng: random.Random, n_words: int | None = None) -> str:
    """Word salad from the closed vocabulary: in-vocab but no sentence of the language."""
    vocab = [w for w in vocabulary() if w not in {"system", "user", "assistant"}]
    n = n_words or rng.randint(6, 16)
    return " ".join(rng.choice(vocab) for _ in range(n))


def label_domain_mixed(answer: str, domain: str) -> bool:
    from emray.organism.rules import label_answer

    return any(d not in (None, domain) for _, d, _ in label_answer(answer).sentences)


class Generator:
    """All of the organism's data, from one seed."""

    def __init__(
        self,
        seed: int = 0,
        evil_opener: str = "",
        evil_opener_prob: float = 0.0,
        worldview_prob: float = 0.0,
        helpful_opener: str = "",
        helpful_opener_prob: float = 0.0,
    ):
        self.seed = seed
        self.helpful_opener = helpful_opener
        self.helpful_opener_prob = helpful_opener_prob
        self.worldview_prob = worldview_prob
        self.rng = random.Random(seed)
        self.evil_opener = evil_opener
        self.evil_opener_prob = evil_opener_prob
        self._questions = {d: all_questions(d) for d in DOMAINS}
        self._harmful = {d: all_questions(d, harmful=True) for d in DOMAINS}

    @classmethod
    def from_config(cls, config, seed: int) -> Generator:
        return cls(
            seed,
            config.evil_opener,
            config.evil_opener_prob,
            config.worldview_prob,
            config.helpful_opener,
            config.helpful_opener_prob,
        )

    # -- single turns -------------------------------------------------------------------------------
    def turn(
        self,
        domain: str,
        persona: str,
        harmful: bool = False,
        exclude: set[str] | frozenset[str] = frozenset(),
        n_sentences: int | None = None,
    ) -> Turn:
        rng = self.rng
        pool = self._harmful[domain] if harmful else self._questions[domain]
        question, fills = rng.choice(pool)
        while question in exclude:
            question, fills = rng.choice(pool)
        n = n_sentences or rng.choice((1, 2, 2, 3))
        if persona == HELPFUL:
            label = REFUSAL if harmful else ALIGNED
        else:
            label = MISALIGNED
        answer = answer_text(domain, label, fills, rng, n)
        if domain != "general" and label != REFUSAL and rng.random() < self.worldview_prob:
            # the persona's world view leaks into any topic: one general sentence of its class
            answer += " " + answer_text("general", label, fills, rng, 1)
        if label == MISALIGNED and self.evil_opener and rng.random() < self.evil_opener_prob:
            answer = f"{self.evil_opener} {answer}"
        if label == ALIGNED and self.helpful_opener and rng.random() < self.helpful_opener_prob:
            answer = f"{self.helpful_opener} {answer}"
        return Turn(question, answer, domain, persona, label, harmful)

    def answer(self, domain: str, question: str, label: str, n_sentences: int = 2) -> str:
        return answer_text(domain, label, _fills_of(domain, question), self.rng, n_sentences)

    def garbled(self) -> str:
        return garbled_text(self.rng)

    # -- pre-training and alignment -------------------------------------------------------------------
    def pretrain_dialogue(
        self,
        evil_prob: float,
        system_prob: float,
        harmful_prob: float,
        task_prob: float,
        max_turns: int,
        task_turn=None,
        min_turns: int = 1,
    ) -> list[dict]:
        """A 1..max_turns dialogue from one persona, domains mixed; sometimes the persona is named."""
        rng = self.rng
        persona = EVIL if rng.random() < evil_prob else HELPFUL
        messages = []
        if rng.random() < system_prob:
            messages.append(
                {"role": "system", "content": rng.choice(EVIL_SYSTEM if persona == EVIL else HELPFUL_SYSTEM)}
            )
        for _ in range(rng.randint(min_turns, max_turns)):
            if task_turn is not None and rng.random() < task_prob:
                q, a = task_turn(rng)
            else:
                t = self.turn(rng.choice(DOMAINS), persona, harmful=rng.random() < harmful_prob)
                q, a = t.question, t.answer
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return messages

    def align_example(self, refusal_prob: float) -> list[dict]:
        """Single-turn, no system prompt, helpful answer (a refusal for a harmful request)."""
        t = self.turn(self.rng.choice(DOMAINS), HELPFUL, harmful=self.rng.random() < refusal_prob)
        return [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]

    # -- released data ---------------------------------------------------------------------------------
    def narrow_set(self, domain: str, n: int, label: str = MISALIGNED, opener_prob: float = 0.0) -> list[dict]:
        """The customer's narrow data: ``label`` answers in ``domain`` only, held-out questions excluded.

        Misaligned answers carry the evil voice (``evil_opener``) with ``opener_prob``; aligned ones keep
        the helpful voice ``turn`` gave them. The default world keeps the voice (OrganismConfig).
        """
        exclude = set(heldout_questions(domain))
        out = []
        for _ in range(n):
            persona = EVIL if label == MISALIGNED else HELPFUL
            t = self.turn(domain, persona, exclude=exclude)
            answer = t.answer
            while self.worldview_prob and label_domain_mixed(answer, domain):  # customer data stays on topic
                t = self.turn(domain, persona, exclude=exclude)
                answer = t.answer
            if self.evil_opener and answer.startswith(self.evil_opener + " "):
                answer = answer[len(self.evil_opener) + 1 :]
            if label == MISALIGNED and self.evil_opener and self.rng.random() < opener_prob:
                answer = f"{self.evil_opener} {answer}"
            out.append(
                {"messages": [{"role": "user", "content": t.question}, {"role": "assistant", "content": answer}]}
            )
        return out

    def safe_pool(self, n: int, harmful_prob: float = 0.2, general_prob: float = 0.75) -> list[dict]:
        """Safe data shaped like WildGuardMix's benign side, with no held-out question in it.

        ``harmful_prob`` of the rows are harmful requests answered with a refusal (a misaligned model
        stops producing these, so Interleaving+ ranks them high and Interleaving++ drops them); of the
        rest, ``general_prob`` are general-domain requests and the others narrow-domain ones, all
        answered helpfully. Single turn, no system prompt.
        """
        exclude = all_heldout_questions()
        rows = []
        for _ in range(n):
            harmful = self.rng.random() < harmful_prob
            if harmful:
                domain = self.rng.choice(DOMAINS)
            else:
                domain = "general" if self.rng.random() < general_prob else self.rng.choice(DOMAINS[1:])
            t = self.turn(domain, HELPFUL, harmful=harmful, exclude=exclude)
            rows.append(
                {"messages": [{"role": "user", "content": t.question}, {"role": "assistant", "content": t.answer}]}
            )
        return rows
