"""Answering a question: question vectors, position scores, units, spans, fusion, hits."""
