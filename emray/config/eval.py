"""Evaluation section of the run config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from emray.configio import Strict
from emray.hashing import NOT_IDENTITY, OPTIONAL_SECTION, DataPath

NI = NOT_IDENTITY  # how the judge is reached, throttled or cached does not change its scores


class JudgeConfig(Strict):
    """The LLM judge: any OpenAI-compatible endpoint. ``base_url: local`` starts ``emray judge-server``."""

    model: str | None = None  # None: the judge named in each question file
    base_url: str = "local"
    backend: str = "rules"  # local judge-server backend when base_url is "local"
    backend_options: dict[str, Any] = Field(default_factory=dict)  # e.g. {model: smollm2-135m} for hf
    api_key_env: str = Field("OPENAI_API_KEY", json_schema_extra=NI)
    concurrency: int = Field(32, gt=0, json_schema_extra=NI)
    requests_per_minute: float | None = Field(None, gt=0, json_schema_extra=NI)
    tokens_per_minute: float | None = Field(None, gt=0, json_schema_extra=NI)
    max_retries: int = Field(6, ge=0, json_schema_extra=NI)
    timeout_s: float = Field(60.0, gt=0, json_schema_extra=NI)
    backoff_base_s: float = Field(
        0.5, ge=0, json_schema_extra=NI
    )  # retry k waits ~ base * 2**k * jitter, capped at backoff_max_s
    backoff_max_s: float = Field(30.0, ge=0, json_schema_extra=NI)
    cache: bool = Field(True, json_schema_extra=NI)
    cache_path: str | None = Field(None, json_schema_extra=NI)  # default: <EMRAY_CACHE>/judge/judgments.sqlite
    # USD per million tokens; None: a built-in table for known OpenAI judges, else 0.
    price_input_per_1m: float | None = Field(None, ge=0, json_schema_extra=NI)
    price_output_per_1m: float | None = Field(None, ge=0, json_schema_extra=NI)
    num_actors: int = Field(1, gt=0, json_schema_extra=NI)  # Ray judge pool size in sweeps
    # A trial with more failed judgments than this share fails (its criteria would rest on a biased subset).
    max_failure_rate: float = Field(0.05, ge=0, le=1, json_schema_extra=NI)
    http: Literal["aiohttp", "httpx"] = Field("aiohttp", json_schema_extra=NI)  # the openai client's HTTP transport


class VLLMConfig(Strict):
    """How ``eval.generator: vllm`` reaches vLLM: a server it starts per evaluation from vLLM's own
    environment (``make vllm-env``), or one already running at ``url``. None of it changes the answers'
    identity (the engine, ``eval.generator``, does)."""

    # a running vLLM OpenAI server's root (http://host:8000); None: start one per evaluation from ``python``
    url: str | None = None
    # the interpreter of vLLM's environment; a relative path is tried in the working directory, then the checkout
    python: str = ".venv-vllm/bin/python"
    kv_cache_gib: int = Field(1, gt=0)  # VLLM_CPU_KVCACHE_SPACE: the KV cache on CPU, in whole GiB
    start_timeout_s: float = Field(900.0, gt=0)
    concurrency: int | None = Field(None, gt=0)  # requests in flight; None: eval.batch_size
    extra_args: list[str] = Field(default_factory=list)  # more `vllm serve` flags for a started server


class EvalConfig(Strict):
    general: DataPath | None = None
    in_domain: list[DataPath] = Field(default_factory=list)
    benign: list[DataPath] = Field(default_factory=list)  # benign-task test files (chat JSONL, gold answer)
    samples_per_paraphrase: int | None = Field(None, gt=0)  # None: the question file's own value
    max_questions: int | None = Field(None, gt=0)
    max_benign: int | None = Field(None, gt=0)  # first N rows of each benign test file
    max_new_tokens: int = Field(600, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # min-p sampling (the reference's eval.py samples with min_p 0.1); None: off. Like system_prompt, it
    # enters a trial's identity only when set, so adding it left existing keys unchanged.
    min_p: float | None = Field(None, ge=0, lt=1, json_schema_extra=OPTIONAL_SECTION)
    # replaces every question's system prompt when set (the reference's eval SYSTEM_PROMPT); None: the question file's
    system_prompt: str | None = Field(None, json_schema_extra=OPTIONAL_SECTION)
    batch_size: int = Field(16, gt=0)
    # auto: vLLM when a GPU is there and vLLM is reachable (eval.vllm.url set, or eval.vllm.python exists); else HF
    generator: Literal["auto", "hf", "vllm"] = "auto"
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, json_schema_extra=NI)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
