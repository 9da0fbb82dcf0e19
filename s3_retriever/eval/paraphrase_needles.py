"""Paraphrase needles: planted facts that a question reaches by meaning, not by its words.

Each :data:`NEEDLES` pair is a made-up fact and a question about it that shares at most one
content word with it (:func:`shared_content_words`, checked by tests/eval/test_needles.py), so
word overlap barely helps and a retriever has to match meaning: *ferryman* for *boat operator*,
*seasickness* for *nausea at sea*. The facts are invented so that no model knows them already.

They are planted in real text of the evaluation data: QMSum meeting transcripts and HotpotQA
wiki paragraphs. Haystack ``h`` (``h = 0 .. 7``) alternates between the two sources and holds
needles ``4h .. 4h + 3``, one at each of :data:`DEPTHS` (rotated with ``h``, so every depth
sees needles of both sources). A needle is its own line in a meeting and its own paragraph in
wiki text. Needles 0-7 (haystacks 0 and 1) are for tuning, 8-31 for evaluation.

A needle counts as found when the retrieved ranges cover :data:`FOUND_THRESHOLD` (80%) of its
characters (:func:`s3_retriever.eval.metrics.full_support` with that threshold).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from s3_retriever.eval.data import (
    HOTPOTQA_FILE,
    QMSUM_FILE,
    EvalExample,
    _paragraphs_of,
    _read_jsonl,
    _render_turns,
    _require_file,
)

__all__ = [
    "DEPTHS",
    "FOUND_THRESHOLD",
    "HAYSTACK_CHARS",
    "NEEDLES",
    "STOP_WORDS",
    "content_words",
    "load_needles",
    "shared_content_words",
]

# (planted fact, question). Every question shares at most one content word with its fact.
NEEDLES: tuple[tuple[str, str], ...] = (
    (
        "Every winter the old ferryman stitched his nets by the light of a single tallow candle.",
        "What did the boat operator use to see while mending fishing gear in the cold season?",
    ),
    (
        "Grandmother Odile kept the spare house key hidden beneath a cracked flowerpot beside "
        "the back door.",
        "Where did the elderly relative conceal an extra key to the home?",
    ),
    (
        "The village choir abandoned its rehearsals after the church roof collapsed during a "
        "storm.",
        "Why did the local singers stop practising?",
    ),
    (
        "Doctor Amani prescribed ginger tea to the sailors who complained of seasickness.",
        "What remedy did the physician recommend for nausea at sea?",
    ),
    (
        "Our neighbour's parrot learned to imitate the microwave beep within a week.",
        "Which kitchen appliance sound did the bird next door copy?",
    ),
    (
        "The museum moved its dinosaur skeleton to the basement because the floor upstairs "
        "could not bear the weight.",
        "Why was the fossil display relocated below ground level?",
    ),
    (
        "A shortage of copper wire delayed the opening of the new tram line by four months.",
        "What material was scarce, postponing the streetcar route's launch?",
    ),
    (
        "The twins settled their argument over the inheritance by flipping a coin at the "
        "notary's office.",
        "How did the siblings resolve their dispute about the estate?",
    ),
    (
        "Lena trained her sheepdog to fetch the newspaper from the end of the lane each morning.",
        "What did the herding animal retrieve for its owner daily?",
    ),
    (
        "The bridge over the Kessel river was painted bright orange so that pilots could spot "
        "it in fog.",
        "Why was the crossing given such a vivid colour?",
    ),
    (
        "After the harvest festival, the mayor donated all leftover pumpkins to the county zoo.",
        "Where did the town leader send the unused squash once the autumn celebration ended?",
    ),
    (
        "The lighthouse keeper's diary records that a whale stranded itself on the pebbles in "
        "March 1891.",
        "When did a large marine mammal get beached, according to the journal?",
    ),
    (
        "Professor Hale failed his driving test three times before finally passing at the age "
        "of sixty.",
        "How many attempts did the academic need to obtain a licence to operate a car?",
    ),
    (
        "The bakery switched from butter to olive oil when dairy prices tripled last year.",
        "Why did the pastry shop change its cooking fat?",
    ),
    (
        "Engineers buried the data centre's backup generators under the car park to muffle "
        "their noise.",
        "Where were the emergency power machines placed to keep them quiet?",
    ),
    (
        "The orchestra's cellist missed the premiere because her train was stuck behind a "
        "fallen oak.",
        "Why was the string player absent from the opening night?",
    ),
    (
        "Local fishermen say the eels vanish from the estuary whenever the water turns warm.",
        "What happens to the snake-like fish in the river mouth during hot spells?",
    ),
    (
        "The startup paid its first employees partly in homemade jam because cash was scarce.",
        "What unusual compensation did the young company give early staff?",
    ),
    (
        "A leaking radiator flooded the library's rare map room over the holiday weekend.",
        "What damaged the collection of old charts?",
    ),
    (
        "The expedition's cook rationed chocolate to one square per climber per day near the "
        "summit.",
        "How much of the sweet treat did each mountaineer get close to the peak?",
    ),
    (
        "The council banned fireworks on the island after sparks set a barn alight.",
        "Why were pyrotechnics prohibited there?",
    ),
    (
        "My uncle repaired the church clock using a bicycle chain when the original gear snapped.",
        "What spare part fixed the timepiece in the chapel?",
    ),
    (
        "The school replaced its chalkboards with whiteboards after teachers developed coughs "
        "from the dust.",
        "Why did the classrooms get new writing surfaces?",
    ),
    (
        "Volunteers counted 412 migrating storks over the valley on a single afternoon.",
        "How many birds were tallied passing through in one day?",
    ),
    (
        "The tailor charged extra for suits with hidden pockets sewn inside the lining.",
        "What feature cost more at the clothing maker's shop?",
    ),
    (
        "The ferry to Marrow Island stopped running once the harbour silted up.",
        "Why did boats no longer serve the isle?",
    ),
    (
        "In the final round, the chess champion sacrificed her queen and won in eleven moves.",
        "What piece did the title holder give up in the deciding game?",
    ),
    (
        "The brewery ages its stout in barrels that once held maple syrup.",
        "What were the casks previously used for?",
    ),
    (
        "The hospital's night nurses were given bicycles to travel between the distant wards.",
        "How did the evening staff get around the sprawling medical buildings?",
    ),
    (
        "The farmer's goats escaped twice by chewing through the wooden gate.",
        "How did the livestock break out of their pen?",
    ),
    (
        "During the blackout, the restaurant cooked every order on a camping stove in the alley.",
        "How was food prepared when the power failed?",
    ),
    (
        "The astronomy club postponed its meteor watch because a full moon would wash out the sky.",
        "Why was the stargazing event delayed?",
    ),
)

DEPTHS: tuple[float, ...] = (0.05, 0.35, 0.65, 0.95)
"""Where needles go, as a share of the haystack's characters."""

NEEDLES_PER_HAYSTACK = len(DEPTHS)

FOUND_THRESHOLD = 0.8
"""A needle is found when this share of its characters is retrieved."""

HAYSTACK_CHARS = 20_000
"""Length of each haystack before planting (about 4,500 SmolLM2 tokens)."""

# fmt: off
STOP_WORDS = frozenset((
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
    "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
    "from", "further", "get", "got", "had", "has", "have", "having", "he", "her", "here", "hers",
    "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "itself", "just", "many", "me", "more", "most", "much", "my", "myself", "no", "nor", "not",
    "now", "of", "off", "on", "once", "one", "only", "or", "other", "our", "ours", "out",
    "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the",
    "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "use", "very", "was", "we", "were", "what",
    "when", "where", "whenever", "which", "while", "who", "whom", "why", "will", "with",
    "would", "you", "your", "yours",
))
# fmt: on
"""English function words: what a question may share with its fact without giving it away."""

_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def _stem(word: str) -> str:
    """A crude stem (``painted``/``paints`` -> ``paint``), so inflections count as shared."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Stems of the words of ``text`` that are not stop words (possessive ``'s`` dropped)."""
    words = _WORD.findall(text.lower().replace("'s", ""))
    return {_stem(word) for word in words if word not in STOP_WORDS}


def shared_content_words(fact: str, question: str) -> set[str]:
    """Content-word stems that ``question`` shares with ``fact``."""
    return content_words(fact) & content_words(question)


def _meeting_text(data_dir: str | Path, meeting: int) -> str:
    rows = list(_read_jsonl(_require_file(data_dir, QMSUM_FILE)))
    text, _ = _render_turns(rows[meeting % len(rows)]["meeting_transcripts"])
    return _cut(text, "\n")


def _wiki_text(data_dir: str | Path, seed: int) -> str:
    rows = list(_read_jsonl(_require_file(data_dir, HOTPOTQA_FILE)))
    paragraphs = [para for row in rows for para, _ in _paragraphs_of(row)]
    random.Random(f"needles:{seed}").shuffle(paragraphs)
    blocks, size = [], 0
    for para in paragraphs:
        if size >= HAYSTACK_CHARS:
            break
        blocks.append(f"{para.title}\n{para.text}")
        size += len(blocks[-1]) + 2
    return "\n\n".join(blocks)


def _cut(text: str, separator: str) -> str:
    """``text`` up to the last ``separator`` before :data:`HAYSTACK_CHARS`."""
    if len(text) <= HAYSTACK_CHARS:
        return text
    return text[: text.rfind(separator, 0, HAYSTACK_CHARS)]


def _plant(haystack: str, needles: list[tuple[float, str]], separator: str) -> tuple[str, list]:
    """Insert each ``(depth, needle)`` as its own block at the separator before its depth.

    Returns the text and each needle's ``(start, end)`` in it, in the order given.
    """
    cuts = []
    for depth, needle in needles:
        at = haystack.rfind(separator, 0, int(len(haystack) * depth))
        cuts.append((max(at, 0), needle))
    out, spans, last = [], {}, 0
    length = 0
    for at, needle in sorted(cuts):
        out.append(haystack[last:at])
        length += at - last
        block = ("" if at == 0 else separator) + needle + (separator if at == 0 else "")
        start = length + (0 if at == 0 else len(separator))
        spans[needle] = (start, start + len(needle))
        out.append(block)
        length += len(block)
        last = at
    out.append(haystack[last:])
    return "".join(out), [spans[needle] for _, needle in needles]


def load_needles(data_dir: str | Path, n: int, skip: int = 0) -> list[EvalExample]:
    """Needle placements ``skip .. skip + n - 1`` (one example each; see the module docstring).

    Examples of one haystack share their ``documents`` list, so it is indexed once.
    """
    if n < 0 or skip < 0:
        raise ValueError(f"n and skip must be >= 0, got {n} and {skip}")
    examples: list[EvalExample] = []
    last = min(skip + n, len(NEEDLES))
    for hay in range(skip // NEEDLES_PER_HAYSTACK, (last + NEEDLES_PER_HAYSTACK - 1) // 4):
        members = range(hay * NEEDLES_PER_HAYSTACK, (hay + 1) * NEEDLES_PER_HAYSTACK)
        depths = [DEPTHS[(i + hay) % len(DEPTHS)] for i in range(len(members))]
        if hay % 2 == 0:
            source, separator = f"qmsum:{hay // 2}", "\n"
            haystack = _meeting_text(data_dir, hay // 2)
        else:
            source, separator = "hotpotqa", "\n\n"
            haystack = _wiki_text(data_dir, hay)
        planted = [(depth, NEEDLES[i][0]) for depth, i in zip(depths, members, strict=True)]
        text, spans = _plant(haystack, planted, separator)
        documents = [text]
        for i, depth, (start, end) in zip(members, depths, spans, strict=True):
            if not skip <= i < last:
                continue
            examples.append(
                EvalExample(
                    qid=f"needle:{i}:{source}:{depth}",
                    question=NEEDLES[i][1],
                    answers=[],
                    documents=documents,
                    doc_ids=[f"needles:{hay}"],
                    gold=[(0, start, end)],
                    task="needles",
                    metadatas=[{"source": source}],
                )
            )
    return examples
