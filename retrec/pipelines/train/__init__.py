"""Training: the loop every family shares, and the families by domain.

``loop.py`` runs any :class:`~retrec.pipelines.train.loop.TrainAdapter` (budget, schedule, checkpoints, resume,
best-on-dev export, bundle publication); ``options.py`` turns config dataclasses into CLI options;
``lr_schedule.py`` holds the schedules. ``text/`` trains the text families from a BEIR collection, ``seq/`` the
sequential recommenders from interactions. ``retrec train KIND`` finds each family's trainer and config in the
registry of kinds (:mod:`retrec.kinds`).
"""
