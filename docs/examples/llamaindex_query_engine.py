"""Question answering with a LlamaIndex ``RetrieverQueryEngine``, fully offline.

S3AttentionRetriever picks evidence spans with the bundled SmolLM2 model's own attention; a
tiny ``CustomLLM`` runs the same model as a local ``transformers`` text-generation pipeline to
write the answer.

    python docs/examples/llamaindex_query_engine.py
    python docs/examples/llamaindex_query_engine.py --question "Why is black tea dark?"
    python docs/examples/llamaindex_query_engine.py --smoke   # 8 new tokens, for tests
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from llama_index.core.llms import (
    CompletionResponse,
    CompletionResponseGen,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import Document, TextNode
from llama_index.retrievers.s3 import S3AttentionRetriever
from pydantic import PrivateAttr

TEXTS: dict[str, str] = {
    "lighthouse": (
        "The Eddystone Lighthouse stands on a dangerous group of rocks fourteen kilometres "
        "south of Plymouth. The present tower, designed by James Douglass, was first lit in "
        "1882. Three earlier lighthouses stood on the same reef; the second burned down in "
        "1755 and the third, built by John Smeaton, was taken down when the rock beneath it "
        "began to crack."
    ),
    "honey": (
        "Honey bees make honey from flower nectar. Worker bees carry the nectar to the hive, "
        "where enzymes break its sugars down and the bees fan their wings to evaporate most "
        "of the water. A strong colony can store more than twenty kilograms of honey in a "
        "good summer."
    ),
    "chess": (
        "In chess, castling is the only move in which two pieces move at once: the king moves "
        "two squares towards a rook, and that rook jumps to the square the king crossed. It "
        "is not allowed when the king is in check or has moved before."
    ),
    "tea": (
        "Green and black tea come from the same plant, Camellia sinensis. Black tea is left "
        "to oxidise after picking, which darkens the leaves, while green tea is heated soon "
        "after harvest so that it stays green."
    ),
}
"""A small offline knowledge base, one document per topic."""

DEFAULT_QUESTION = "How do bees turn nectar into honey?"


class LocalSmolLM(CustomLLM):
    """The bundled SmolLM2 model as a greedy ``transformers`` text-generation pipeline."""

    max_new_tokens: int = 96
    """Tokens generated per answer."""
    context_window: int = 2048
    """Prompt tokens the response synthesizer may fill."""
    _generator: Any = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import torch
        from transformers import pipeline

        from s3_retriever.model.loading import default_model_folder

        self._generator = pipeline(
            "text-generation", model=str(default_model_folder()), dtype=torch.float32, device="cpu"
        )

    @property
    def metadata(self) -> LLMMetadata:
        """Window and output sizes the prompt helper packs context into."""
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            model_name="SmolLM2-135M-Instruct",
        )

    def _generate(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        out = self._generator(
            messages, max_new_tokens=self.max_new_tokens, do_sample=False, return_full_text=False
        )
        return str(out[0]["generated_text"]).strip()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` as one user turn of the model's chat template."""
        return CompletionResponse(text=self._generate(prompt))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """One-chunk stream: the whole completion at once."""
        text = self._generate(prompt)
        yield CompletionResponse(text=text, delta=text)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the index, ask one question, print the answer and its sources; return both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--k", type=int, default=3, help="spans to retrieve")
    parser.add_argument("--token-budget", type=int, default=256, help="tokens of evidence")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--sae-path", default=None, help="SAE bundle (default: the shipped one)")
    parser.add_argument("--smoke", action="store_true", help="tiny generation, for tests")
    args = parser.parse_args(argv)

    documents = [
        Document(text=text, id_=name, metadata={"source": f"{name}.txt"})
        for name, text in TEXTS.items()
    ]
    retriever = S3AttentionRetriever.from_documents(
        documents,
        retriever_kwargs={"sae_path": args.sae_path} if args.sae_path else None,
        similarity_top_k=args.k,
        token_budget=args.token_budget,
    )
    llm = LocalSmolLM(max_new_tokens=8 if args.smoke else args.max_new_tokens)
    engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
    response = engine.query(args.question)
    sources = response.source_nodes

    print(f"Question: {args.question}\nAnswer: {response}\nSources:")
    for i, result in enumerate(sources, 1):
        node = result.node
        assert isinstance(node, TextNode)
        print(
            f"  [{i}] {node.metadata['source']} chars {node.start_char_idx}-{node.end_char_idx} "
            f"score {result.score:.3f}: {node.get_content()!r}"
        )

    # The sources shown are exactly the spans the retriever returns for this question.
    direct = retriever.retrieve(args.question)
    assert [(s.node.node_id, s.node.get_content()) for s in sources] == [
        (d.node.node_id, d.node.get_content()) for d in direct
    ]
    for result in sources:
        node = result.node
        assert isinstance(node, TextNode) and node.ref_doc_id is not None
        assert TEXTS[node.ref_doc_id][node.start_char_idx : node.end_char_idx] == node.get_content()
    return {"question": args.question, "answer": str(response), "sources": list(sources)}


if __name__ == "__main__":
    main()
