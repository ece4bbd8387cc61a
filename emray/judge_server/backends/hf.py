"""``hf``: a local Hugging Face causal LM as the judge, scored by the same logprob rule.

The judge prompt is chat-templated (``add_generation_prompt=True``); one forward pass gives the
next-token distribution, whose top-k (token text, logprob) pairs are what an OpenAI judge returns for a
one-token answer. Requests are scored in small batches (left padding) on a worker thread, so the
server's event loop keeps accepting calls while the model runs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from emray.judge_server.backends import Backend


class HFBackend(Backend):
    def __init__(
        self,
        model: str = "smollm2-135m",
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 8,
        threads: int | None = 1,
        adapter: str | None = None,
    ):
        import torch

        from emray.config import ModelConfig
        from emray.models import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model_name = model
        self.model, self.tokenizer = load_model(ModelConfig(name=model, device=device, dtype=dtype), adapter=adapter)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[tuple[list[dict], int, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    def score_batch(self, conversations: list[list[dict]], top_k: int) -> list[list[tuple[str, float]]]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in conversations
        ]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        with self._lock, torch.inference_mode():
            logits = self.model(**enc).logits[:, -1, :].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        values, ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        return [
            [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(row_v.tolist(), row_i.tolist())]
            for row_v, row_i in zip(values, ids)
        ]

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            top_k = max(k for _, k, _ in batch)
            try:
                out = await asyncio.to_thread(self.score_batch, [m for m, _, _ in batch], top_k)
                for (_, k, fut), pairs in zip(batch, out):
                    fut.set_result(pairs[:k])
            except Exception as err:  # noqa: BLE001 - handed to every waiting request
                for _, _, fut in batch:
                    fut.set_exception(err)
        self._worker = None

    async def top_logprobs(self, model: str, messages: list[dict], top_k: int) -> list[tuple[str, float]]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((messages, top_k, fut))
        if self._worker is None:  # calls that arrive while a batch runs form the next batch
            self._worker = asyncio.create_task(self._drain())
        return await fut
