"""The EM literature's question YAML format.

Each item: ``id``, ``type``, ``paraphrases`` (list of str), ``samples_per_paraphrase``, optional
``system``, ``judge`` (judge model id) and ``judge_prompts`` (metric name -> template with
``{question}``, ``{answer}`` and optionally ``{reasoning}``). YAML anchors and aliases are resolved by
the YAML loader, so files that share one judge prompt among many questions load as written.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emray.configio import check_duplicate_keys, format_loc, read_text
from emray.data.paths import resolve_data_path

ALLOWED_FIELDS = {"question", "answer", "reasoning"}


class QuestionError(ValueError):
    """A malformed question file; the message names file, question id and key."""


class Question(BaseModel):
    model_config = ConfigDict(extra="allow")  # files carry extra keys (type, notes) we keep but ignore

    id: str
    paraphrases: list[str] = Field(min_length=1)
    samples_per_paraphrase: int = Field(1, gt=0)
    system: str | None = None
    judge: str | None = None
    judge_prompts: dict[str, str] = Field(default_factory=dict)

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, value: Any) -> str:
        return str(value)

    @field_validator("judge_prompts")
    @classmethod
    def _check_templates(cls, prompts: dict[str, str]) -> dict[str, str]:
        for metric, template in prompts.items():
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            unknown = fields - ALLOWED_FIELDS
            if unknown:
                raise ValueError(f"judge prompt {metric!r} has unknown placeholders {sorted(unknown)}")
            if "answer" not in fields:
                raise ValueError(f"judge prompt {metric!r} has no {{answer}} placeholder")
        return prompts

    def render_judge_prompt(self, metric: str, question: str, answer: str, reasoning: str = "") -> str:
        return self.judge_prompts[metric].format(question=question, answer=answer, reasoning=reasoning)

    def messages(self, paraphrase: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": paraphrase}]


def load_questions(path: str | Path) -> list[Question]:
    resolved = resolve_data_path(path)
    if not resolved.exists() and not resolved.is_symlink():
        raise QuestionError(f"{path}: no such question file")
    text = read_text(resolved, path, QuestionError, "question file (YAML)")
    try:
        check_duplicate_keys(yaml.compose(text), path, QuestionError)
        items = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise QuestionError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(items, list):
        raise QuestionError(f"{path}: expected a list of questions at the top level")
    questions, seen = [], set()
    for index, item in enumerate(items):
        label = f"{path}: question {index}" + (f" (id {item.get('id')})" if isinstance(item, dict) else "")
        if not isinstance(item, dict):
            raise QuestionError(f"{label}: expected a mapping")
        try:
            question = Question.model_validate(item)
        except ValidationError as err:
            detail = "; ".join(f"key '{format_loc(e['loc'])}': {e['msg']}" for e in err.errors())
            raise QuestionError(f"{label}: {detail}") from None
        if question.id in seen:
            raise QuestionError(f"{label}: duplicate id {question.id!r}")
        seen.add(question.id)
        questions.append(question)
    return questions
