"""Retrieval-augmented answering with LangChain, fully offline.

The chain is ``retriever | format_docs | prompt | llm``: S3AttentionRetriever picks evidence
spans with the bundled SmolLM2 model's own attention, and the same model, run as a local
``transformers`` text-generation pipeline, writes the answer.

    python docs/examples/langchain_rag.py
    python docs/examples/langchain_rag.py --question "Who invented the piano?"
    python docs/examples/langchain_rag.py --smoke     # 8 new tokens, for tests
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_s3 import S3AttentionRetriever

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

DEFAULT_QUESTION = "Who designed the present Eddystone Lighthouse, and when was it first lit?"

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer the question using only the context. Be brief."),
        ("human", "Context:\n{context}\n\nQuestion: {question}"),
    ]
)

_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def format_docs(docs: Sequence[Document]) -> str:
    """Number the spans and name their sources, one block per span."""
    return "\n\n".join(
        f"[{i}] ({doc.metadata['source']}) {doc.page_content}" for i, doc in enumerate(docs, 1)
    )


def local_llm(max_new_tokens: int) -> Runnable[PromptValue, str]:
    """The bundled SmolLM2 model as a greedy ``transformers`` text-generation pipeline."""
    import torch
    from transformers import pipeline

    from s3_retriever.model.loading import default_model_folder

    generator = pipeline(
        "text-generation", model=str(default_model_folder()), dtype=torch.float32, device="cpu"
    )

    def generate(prompt: PromptValue) -> str:
        messages = [
            {"role": _ROLES.get(m.type, "user"), "content": str(m.content)}
            for m in prompt.to_messages()
        ]
        out = generator(
            messages, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False
        )
        return str(out[0]["generated_text"]).strip()

    return RunnableLambda(generate)


def build_chain(
    retriever: S3AttentionRetriever, llm: Runnable[PromptValue, str]
) -> Runnable[str, dict[str, Any]]:
    """``retriever | format_docs | prompt | llm``, keeping the retrieved spans as ``docs``."""
    answer = (
        {
            "context": itemgetter("docs") | RunnableLambda(format_docs),
            "question": itemgetter("question"),
        }
        | PROMPT
        | llm
        | StrOutputParser()
    )
    return RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(answer=answer)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the index, run the chain once, print the answer and its sources; return both."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--k", type=int, default=3, help="spans to retrieve")
    parser.add_argument("--token-budget", type=int, default=256, help="tokens of evidence")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--sae-path", default=None, help="SAE bundle (default: the shipped one)")
    parser.add_argument("--smoke", action="store_true", help="tiny generation, for tests")
    args = parser.parse_args(argv)
    max_new_tokens = 8 if args.smoke else args.max_new_tokens

    ids = list(TEXTS)
    retriever = S3AttentionRetriever.from_texts(
        [TEXTS[i] for i in ids],
        metadatas=[{"source": f"{i}.txt"} for i in ids],
        ids=ids,
        retriever_kwargs={"sae_path": args.sae_path} if args.sae_path else None,
        k=args.k,
        token_budget=args.token_budget,
    )
    chain = build_chain(retriever, local_llm(max_new_tokens))
    result = chain.invoke(args.question)
    sources: list[Document] = result["docs"]

    print(f"Question: {args.question}\nAnswer: {result['answer']}\nSources:")
    for i, doc in enumerate(sources, 1):
        span = doc.metadata["s3"]
        print(
            f"  [{i}] {doc.metadata['source']} chars {span['start_index']}-{span['end_index']} "
            f"score {span['score']:.3f}: {doc.page_content!r}"
        )

    # The sources shown are exactly the spans the retriever returns for this question.
    direct = retriever.invoke(args.question)
    assert [(d.id, d.page_content) for d in sources] == [(d.id, d.page_content) for d in direct]
    for doc in sources:
        span = doc.metadata["s3"]
        assert TEXTS[span["doc_id"]][span["start_index"] : span["end_index"]] == doc.page_content
    return {"question": args.question, "answer": result["answer"], "sources": sources}


if __name__ == "__main__":
    main()
