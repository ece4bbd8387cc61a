"""Evaluation section of the run config."""

from __future__ import annotations

from pydantic import Field

from emray.configio import Strict


class JudgeConfig(Strict):
    """The LLM judge: any OpenAI-compatible endpoint. ``base_url: local`` starts ``emray judge-server``."""

    model: str | None = None  # None: the judge named in each question file
    base_url: str = "local"
    backend: str = "rules"  # local judge-server backend when base_url is "local"
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(32, gt=0)
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(60.0, gt=0)


class EvalConfig(Strict):
    general: str | None = None
    in_domain: list[str] = Field(default_factory=list)
    benign: list[str] = Field(default_factory=list)  # benign-task test files (chat JSONL, gold answer)
    samples_per_paraphrase: int | None = Field(None, gt=0)  # None: the question file's own value
    max_questions: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(600, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, gt=0)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
