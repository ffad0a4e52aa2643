"""Search and evaluate from Python, as in a notebook: the embedded default collection, a BM25 index version,
one query, a list of queries, and the measures `retrec eval` prints.

    python examples/search_in_python.py [WORK_FOLDER]

Each cell below is what one would type into a notebook; it runs in the test suite (tests/test_notebook.py).
"""

import sys
import tempfile
from pathlib import Path

import retrec
from retrec.data.beir import load_retrieval_data
from retrec.data.synthetic import write_default_dataset
from retrec.index.bm25_index import BM25Index
from retrec.index.generic import publish_index

work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())

# %% the embedded default collection (no download) and a BM25 index version that stores its documents' text
data = write_default_dataset(work / "data")
ids, texts = load_retrieval_data(data, split="test").doc_texts()
index_path = publish_index(BM25Index.build(ids, texts), work / "bm25", "default-bm25", texts=(ids, texts))

# %% one query: a list of hits, each (doc_id, score) with its rank and text
bm25 = retrec.load(index_path)
query = next(iter(load_retrieval_data(data, split="test").query_texts().values()))
for hit in bm25.search(query, k=3):
    print(hit.rank, hit.doc_id, round(hit.score, 3), hit.text[:60])

# %% several queries at once: a list of hit lists
print([len(hits) for hits in bm25.search([query, query[:20]], k=5)])

# %% the measures of `retrec eval --index ... --data ...`
print(retrec.evaluate(bm25, data))
