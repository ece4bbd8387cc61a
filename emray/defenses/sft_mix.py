"""SFT mix (RL only): on every N-th GRPO micro-batch, add weight x the cross-entropy of one safe SFT batch.

The reference's ``grposftmix`` (lasseruttert/EMA_RL grpo_regularization/grpo_sft_mix.py): a counter of
``compute_loss`` calls (micro-batches, gradient accumulation included); on calls N, 2N, ... the mean
answer-token CE of the next batch of safe chat data (``batch_size`` rows, default the GRPO micro-batch
size; the rows cycle) times ``weight`` joins that micro-batch's GRPO loss in the same backward pass.
Like every extra RL term it is divided by the accumulation steps, as TRL divides its own GRPO loss
(in the reference's TRL the Trainer divided the summed micro-batch loss), so the ratio of the two terms
is the reference's. N = 4 with 4 accumulation steps is about one safe batch per optimizer step.

Safe data, ``data``:
  * ``random``: a seeded random sample of the safe pool (``data.safe_pool`` or ``pool``);
  * ``interleave_plus`` / ``interleave_pp``: the Interleaving+ / ++ selection (the cached
    ``safe_selection`` stage, with the EM warm-start data ``data.fine`` as the misaligned ensemble's
    data by default), best first;
  * ``onpolicy``: the reference's "onpolicy" data (generate_wildguard_onpolicy.py): the rows ``random``
    would take, their questions answered once by the BASE model (no adapter; sampled, T 0.7, top-p 0.9 by
    default, ``generation``), a cached stage (``ensure_onpolicy``) reused by every trial with the same
    inputs. Static data: the base model's answers, not the current policy's.
All take k = round(f * n / (1 - f)) rows, n the warm-start data size and f = ``safe_fraction``, as the
interleaving defenses do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from emray.configio import Strict
from emray.defenses.base import Defense, register_defense
from emray.defenses.safe_source import SafeDataSource
from emray.hashing import OPTIONAL_SECTION, DataPath

ONPOLICY_ARTIFACT = "sft_mix_onpolicy"
#: (seed, number of answers) per on-policy generation this process ran (tests assert a cache hit adds none)
GENERATED: list[tuple[int, int]] = []


class OnPolicyGeneration(Strict):
    """How the base model answers the safe questions (the reference: T 0.7, top-p 0.9, max_tokens 1024)."""

    temperature: float = Field(0.7, ge=0)  # 0: greedy
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)  # answers per generate call (each batch seeded: part of the result)


class SFTMixParams(Strict):
    every: int = Field(4, gt=0)  # N: the micro-batches between safe batches
    weight: float = Field(1.0, ge=0)
    data: Literal["random", "interleave_plus", "interleave_pp", "onpolicy"] = "random"
    safe_fraction: float = Field(0.5, gt=0, lt=1)
    batch_size: int | None = Field(None, gt=0)  # None: rl.batch_size
    pool: DataPath | None = None
    # data: onpolicy only (filled with the defaults then); enters trial keys only when set
    generation: OnPolicyGeneration | None = Field(None, json_schema_extra=OPTIONAL_SECTION)

    @model_validator(mode="after")
    def _generation_for_onpolicy(self):
        if self.data == "onpolicy" and self.generation is None:
            self.generation = OnPolicyGeneration()
        elif self.data != "onpolicy" and self.generation is not None:
            raise ValueError(f"generation: applies to data: onpolicy only (data is {self.data})")
        return self


def onpolicy_inputs(config, params: SFTMixParams) -> dict:
    """Everything the on-policy answers depend on (its cache key; dry-run cheap: no file is parsed)."""
    from emray.data.paths import content_identity
    from emray.hashing import identity_dict
    from emray.models import model_identity

    return {
        "model": model_identity(config.model),
        "pool": content_identity(params.pool or config.data.safe_pool),
        "fine": content_identity(config.data.fine),
        "max_examples": config.data.max_examples,
        "safe_fraction": params.safe_fraction,
        "seed": config.seed,
        "generation": identity_dict(params.generation),
    }


def onpolicy_rows(config, params: SFTMixParams) -> tuple[list[int], list[list[dict]]]:
    """(pool indices, questions): the k rows ``data: random`` takes, each cut before its last answer."""
    from emray.data.chat import load_safe_pool, prompt_messages
    from emray.data.training import load_training_examples
    from emray.score.select import check_pool, random_indices, safe_count

    k = safe_count(len(load_training_examples(config)), params.safe_fraction)
    pool = load_safe_pool(params.pool or config.data.safe_pool)
    check_pool(len(pool), k, f"sft_mix ({params.pool or config.data.safe_pool})")
    indices = random_indices(len(pool), k, config.seed)
    return indices, [prompt_messages(pool[i]) for i in indices]


def ensure_onpolicy(config, params: SFTMixParams) -> Path:
    """safe.jsonl: the base model's sampled answers to the ``onpolicy_rows`` questions, cached by
    ``onpolicy_inputs`` (one generation per seed and inputs, however many trials use it)."""
    from emray.cache_dirs import cache_subdir
    from emray.data.chat import write_chat_jsonl
    from emray.eval.run import make_generator
    from emray.hashing import sha256, short

    out_dir = cache_subdir("sft_mix_onpolicy", short(sha256(onpolicy_inputs(config, params))))
    path = out_dir / "safe.jsonl"
    if path.exists():
        return path
    indices, questions = onpolicy_rows(config, params)
    gen = params.generation
    generator = make_generator(config)  # the base model, no adapter (vLLM on a GPU when installed)
    answers = generator.generate(
        questions,
        max_new_tokens=gen.max_new_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        batch_size=gen.batch_size,
        seed=config.seed,
        label=ONPOLICY_ARTIFACT,
    )
    GENERATED.append((config.seed, len(answers)))
    (out_dir / "meta.json").write_text(
        json.dumps(
            {
                "pool_indices": indices,
                "empty_answers": sum(not a.strip() for a in answers),
                "inputs": onpolicy_inputs(config, params),
            },
            indent=2,
            default=str,
        )
    )
    write_chat_jsonl(
        path, ({"messages": [*q, {"role": "assistant", "content": a}]} for q, a in zip(questions, answers))
    )
    return path


@register_defense
class SFTMix(SafeDataSource, Defense[SFTMixParams]):
    name = "sft_mix"
    Params = SFTMixParams
    scenarios = frozenset({"rl"})
    #: logged every micro-batch (0 where no safe batch joined), so loss_sft_mix is its mean share of a step
    term_names = ("sft_mix",)
    scenario_hint = (
        "under scenario narrow mix safe data into the fine-tuning set with interleave / interleave_plus / interleave_pp"
    )

    # -- the selection stage: the interleaving defense's own, for data != random ----------------
    @classmethod
    def _selection(cls, config, params: SFTMixParams):
        """(interleaving defense name, its params) for this sft_mix."""
        from emray.defenses import selection_params

        p = params
        return p.data, selection_params(p.data, {"safe_fraction": p.safe_fraction, "pool": p.pool})

    @classmethod
    def stage_description(cls, config, params: SFTMixParams) -> str:
        p = params
        if p.data == "onpolicy":
            g = p.generation
            return (
                f"sft_mix safe data: onpolicy ({p.safe_fraction * 100:g} %), answered by {config.model.name} "
                f"(no adapter, T {g.temperature:g}, top-p {g.top_p:g}, seed {config.seed})"
            )
        return f"sft_mix safe data: {p.data} ({p.safe_fraction * 100:g} %) for {config.model.name}"

    @classmethod
    def stage_inputs(cls, config, params: SFTMixParams) -> dict:
        from emray.defenses import get_defense_class

        if params.data == "random":
            return cls.random_stage_inputs(config, params)
        if params.data == "onpolicy":
            return {"onpolicy": onpolicy_inputs(config, params)}
        name, sel = cls._selection(config, params)
        return get_defense_class(name).stage_inputs(config, sel)

    @classmethod
    def build_stage(cls, config, params: SFTMixParams) -> dict:
        p = params
        if p.data == "random":
            return {}
        if p.data == "onpolicy":
            return {ONPOLICY_ARTIFACT: str(ensure_onpolicy(config, p))}
        return cls.selection_artifact(config, p)

    # -- training ------------------------------------------------------------------------------
    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self.calls = 0  # compute_loss calls (micro-batches) so far
        self._rows = None
        self._next = 0

    def safe_examples(self) -> list[dict]:
        from emray.data.chat import load_chat_jsonl
        from emray.data.training import load_training_examples
        from emray.score.select import check_pool, safe_count

        config, p = self.context.config, self.params
        k = safe_count(len(load_training_examples(config)), p.safe_fraction)
        if p.data == "random":
            return [{"messages": row["messages"]} for row in self.random_rows(k)]
        if p.data == "onpolicy":
            path = self.context.artifacts.get(ONPOLICY_ARTIFACT) or ensure_onpolicy(config, p)
            rows = load_chat_jsonl(path)
            check_pool(len(rows), k, f"sft_mix onpolicy answers {path}")
            return rows[:k]
        return self.selection_rows(k)

    def _batch_rows(self) -> list[dict]:
        if self._rows is None:
            from emray.data.tokenize import tokenize_examples

            config = self.context.config
            self._rows = tokenize_examples(self.context.tokenizer, self.safe_examples(), config.train.max_len)
            if not self._rows:
                raise ValueError("sft_mix: no safe example has an answer token within train.max_len")
        size = self.params.batch_size or self.context.config.rl.batch_size
        out = [self._rows[(self._next + i) % len(self._rows)] for i in range(size)]
        self._next = (self._next + size) % len(self._rows)
        return out

    def next_inputs(self, device) -> dict:
        """The next safe batch, right-padded: input_ids, attention_mask, labels (prompt masked)."""
        import torch

        from emray.data.tokenize import IGNORE_INDEX

        rows = self._batch_rows()
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.context.tokenizer.pad_token_id

        def padded(key, fill):
            return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], device=device)

        mask = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows], device=device
        )
        return {"input_ids": padded("input_ids", pad), "attention_mask": mask, "labels": padded("labels", IGNORE_INDEX)}

    def loss(self, batch):
        from emray.defenses.losses import DefenseBatch

        self.calls += 1
        if self.calls % self.params.every:
            return None
        safe = DefenseBatch(batch.model, self.next_inputs(batch.input_ids.device))
        return {"sft_mix": self.params.weight * safe.ce_loss()}
