"""Sequential recommenders trained on interactions: ``bert4rec``, ``sasrec``, ``onerec`` (+ ``onerec_dpo``), the count
models (``counts``) and their fusion (``rec_fusion``).

Shared, family-neutral: ``config.py`` (options of every sequence trainer), ``data.py`` (leave-one-out split,
held-out users, windows), ``item_softmax.py`` (loss, validation, adapter and export of BERT4Rec and SASRec),
``generation.py`` (OneRec's beam generation for metrics and DPO).
"""
