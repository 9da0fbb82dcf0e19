"""End-to-end QA: answer from retrieved context with a small instruct model, greedily.

The same fixed prompt serves every method, so a difference in F1 comes from the context alone.
Retention is a method's mean F1 divided by the full-context run's on the same questions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from s3_retriever.eval.methods import Retrieved, middle_truncate
from s3_retriever.model.loading import LoadedModel, load_model

__all__ = ["Generator", "PROMPT", "render_context"]

PROMPT = (
    "Read the passages below, then answer the question with a short phrase taken from them. "
    "Reply with the answer only.\n\n{context}\n\nQuestion: {question}\nAnswer:"
)
"""The one prompt every method is scored with; ``{context}`` holds the retrieved text."""

GAP = "\n...\n"
"""Written between retrieved pieces that are not adjacent in the source."""


def render_context(pieces: Sequence[Retrieved]) -> str:
    """Retrieved pieces in document order, with a gap marker where text was left out."""
    ordered = sorted(pieces, key=lambda p: (p.doc, p.start))
    return GAP.join(p.text for p in ordered)


class Generator:
    """Greedy answers from an instruct model, prompt middle-truncated to its context window."""

    def __init__(
        self,
        model: str | None = None,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 7_600,
        loaded: LoadedModel | None = None,
    ) -> None:
        self.loaded = loaded if loaded is not None else load_model(model)
        self.name = self.loaded.model_id
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        # Methods often return the same context (and sweeps repeat the full-context run);
        # greedy decoding makes the answer a function of the prompt, so it is computed once.
        self._answers: dict[tuple[str, str], str] = {}

    def prompt_ids(self, context: str, question: str) -> list[int]:
        """Chat-formatted prompt token ids; the context's middle is cut if it is too long."""
        tokenizer: Any = self.loaded.tokenizer
        frame = self._chat(PROMPT.format(context="", question=question))
        room = max(self.max_prompt_tokens - len(frame), 0)
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        cut = middle_truncate(context_ids, room)
        if cut is not None:
            context = tokenizer.decode(context_ids[: cut[0]]) + GAP
            context += tokenizer.decode(context_ids[cut[1] :])
        return self._chat(PROMPT.format(context=context, question=question))

    def _chat(self, user_message: str) -> list[int]:
        tokenizer: Any = self.loaded.tokenizer
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": user_message}],
                add_generation_prompt=True,
                tokenize=True,
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(tokenizer(user_message)["input_ids"])

    def answer(self, context: str, question: str) -> str:
        """The model's greedy answer, first line only, stripped."""
        key = (context, question)
        if key not in self._answers:
            if len(self._answers) >= 256:
                self._answers.clear()
            self._answers[key] = self._generate(context, question)
        return self._answers[key]

    def _generate(self, context: str, question: str) -> str:
        tokenizer: Any = self.loaded.tokenizer
        ids = torch.tensor([self.prompt_ids(context, question)])
        with torch.inference_mode():
            out = self.loaded.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                # Only the first line is scored, so decoding stops there.
                stop_strings=["\n"],
                tokenizer=tokenizer,
            )
        text = str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        lines = text.strip().splitlines()
        return lines[0].strip() if lines else ""
