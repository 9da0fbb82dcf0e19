"""Node postprocessors for evaluating span results at document level."""

from __future__ import annotations

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode


class SourceDocuments(BaseNodePostprocessor):
    """Replace spans by their source documents: node id = ``ref_doc_id``, best rank kept.

    ``S3AttentionRetriever`` returns spans, whose node ids are ``"{doc_id}:{start}:{end}"``. A
    labelled set that names the relevant *documents* (``expected_ids`` of
    ``RetrieverEvaluator``) needs nodes whose ids are document ids::

        RetrieverEvaluator.from_metric_names(
            ["hit_rate", "mrr"], retriever=retriever, node_postprocessors=[SourceDocuments()]
        )

    The node text is the first (best) span of each document; metadata is kept.
    """

    @classmethod
    def class_name(cls) -> str:
        return "S3SourceDocuments"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        seen: set[str] = set()
        out: list[NodeWithScore] = []
        for result in nodes:
            doc_id = result.node.ref_doc_id or result.node.node_id
            if doc_id in seen:
                continue
            seen.add(doc_id)
            node = TextNode(
                id_=doc_id, text=result.node.get_content(), metadata=dict(result.node.metadata)
            )
            out.append(NodeWithScore(node=node, score=result.score))
        return out
