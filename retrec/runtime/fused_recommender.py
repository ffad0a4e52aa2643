"""Recommender fusion (kind ``model/rec-fusion``): a weighted sum of component recommenders' normalised scores.

A fusion bundle holds its components as whole bundles of any registered recommender kind, each verified by its
own manifest and by the fusion's (every file's checksum), and names in ``config.components`` how each one's
scores become a distribution over its catalogue before weighting:

- ``softmax``: for logits (neural models): ``exp((s - max) / T) / sum``, with the component's temperature ``T``
  (default 1; ``retrec train fusion`` chooses it on validation with the weights);
- ``sum``: for non-negative scores (count models): ``s / sum``.

The fused score of an item is ``sum_c w_c * p_c(item)``: a mixture of the components' next-item
distributions, so weights are comparable across models whatever their score scales. The catalogue is the
union of the components' (in first-seen order); an item a component lacks has probability 0 there.

    <bundle>/components/<name>/...     one bundle per component
    manifest config: {"components": [{"name": "sasrec", "weight": 0.7, "normalise": "softmax", "temperature": 1.0},
                                     {"name": "markov", "weight": 0.3, "normalise": "sum"}]}

Example::

    rec = FusedRecommender.load("artifacts/sasrec+markov")
    rec.recommend([["12", "7"]], k=10)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrec import kinds
from retrec.bundle import BundleError, Manifest, load_bundle
from retrec.contracts import strict_options
from retrec.kinds import FUSION_MODEL
from retrec.runtime.recommender import Recommender, ScoringRecommender, SkipReport

NORMALISATIONS = ("softmax", "sum")
COMPONENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_COMPONENTS = 16
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


def normalise(scores: np.ndarray, how: str, temperature: float = 1.0) -> np.ndarray:
    """Rows of scores (``-inf``: never recommended) → rows of probabilities (0 where ``-inf``)."""
    s = np.asarray(scores, dtype=np.float64) / (temperature if how == "softmax" else 1.0)
    finite = np.isfinite(s)
    if how == "softmax":
        top = np.where(finite, s, -np.inf).max(axis=1, keepdims=True)
        e = np.where(finite, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
    elif how == "sum":
        e = np.where(finite, np.maximum(s, 0.0), 0.0)
    else:
        raise ValueError(f"unknown normalisation {how!r}; choose one of {', '.join(NORMALISATIONS)}")
    total = e.sum(axis=1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


class FusedRecommender(ScoringRecommender):
    def __init__(self, components: Sequence[Recommender], weights: Sequence[float], normalisations: Sequence[str],
                 manifest: Manifest | None = None, temperatures: Sequence[float] | None = None) -> None:
        temperatures = [1.0] * len(components) if temperatures is None else list(temperatures)
        if not components or not len(components) == len(weights) == len(normalisations) == len(temperatures):
            raise ValueError("fusion needs one weight and one normalisation per component, and a component")
        if not all(MIN_TEMPERATURE <= t <= MAX_TEMPERATURE for t in temperatures):
            raise ValueError(f"temperatures must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        self.temperatures = [float(t) for t in temperatures]
        for how in normalisations:
            normalise(np.zeros((0, 1)), how)  # rejects an unknown one
        self.components = list(components)
        self.weights = [float(w) for w in weights]
        self.normalisations = list(normalisations)
        self.manifest = manifest
        catalogue: dict[str, int] = {}
        for rec in self.components:
            for item in rec.item_ids:
                catalogue.setdefault(str(item), len(catalogue))
        self.item_ids = list(catalogue)
        self._columns = [np.fromiter((catalogue[str(i)] for i in rec.item_ids), np.int64, count=len(rec.item_ids))
                         for rec in self.components]

    @property
    def name(self) -> str:
        return "fusion" if self.manifest is None else f"{self.manifest.name}@{self.manifest.version}"

    def probabilities(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> list[np.ndarray]:
        """Each component's distribution over the fused catalogue, ``[B, len(item_ids)]`` float64.

        ``report`` counts the history items that no component knows.
        """
        if report is not None:
            for history in histories:
                for item, pos in zip(history, self.positions(list(history)).tolist()):
                    if pos < 0:
                        report.add(str(item))
        return self.distributions([rec.score(histories) for rec in self.components])

    def distributions(self, raw: Sequence[np.ndarray], temperatures: Sequence[float] | None = None) -> list[np.ndarray]:
        """Components' raw score rows (each over its own catalogue) → distributions over the fused catalogue."""
        temps = self.temperatures if temperatures is None else temperatures
        out = []
        for scores, column, how, t in zip(raw, self._columns, self.normalisations, temps):
            p = np.zeros((len(scores), len(self.item_ids)))
            p[:, column] = normalise(scores, how, t)
            out.append(p)
        return out

    def combine(self, probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
        w = self.weights if weights is None else weights
        fused = sum(wi * p for wi, p in zip(w, probabilities))
        out = np.asarray(fused, dtype=np.float64)
        out[out <= 0] = -np.inf  # no component gives the item any probability: never recommended
        return out.astype(np.float32)

    def score(self, histories: Sequence[Sequence[str]], report: SkipReport | None = None) -> np.ndarray:
        return self.combine(self.probabilities(histories, report))

    @property
    def component_names(self) -> list[str]:
        """The components' names (the bundle's ``config.components``; ``c0, c1, ...`` when built in code)."""
        specs = (self.manifest.config.get("components") or []) if self.manifest is not None else []
        return [spec["name"] for spec in specs] if len(specs) == len(self.components) else \
            [f"c{i}" for i in range(len(self.components))]

    def explain(self, history: Sequence[str], items: Sequence[str]) -> list[dict[str, float]]:
        """Per item, each component's part of its fused score (``weight × probability``; they sum to it)."""
        at = {item: i for i, item in enumerate(self.item_ids)}
        probabilities = self.probabilities([list(history)])
        return [{name: float(w * p[0, at[item]]) for name, w, p in zip(self.component_names, self.weights,
                                                                      probabilities)} for item in items]

    @classmethod
    @strict_options(FUSION_MODEL)
    def load(cls, directory: str | Path, threads: int | None = None) -> FusedRecommender:
        return cls.from_manifest(load_bundle(directory, kind=FUSION_MODEL), threads)

    @classmethod
    def from_manifest(cls, manifest: Manifest, threads: int | None = None) -> FusedRecommender:
        """The fusion a (verified) manifest describes: every component loaded through its kind's loader."""
        where = manifest.path
        specs = manifest.config.get("components")
        if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_COMPONENTS:
            raise BundleError(f"{where}: config.components must list 1 to {MAX_COMPONENTS} components")
        components, weights, norms, temps, names = [], [], [], [], set()
        for spec in specs:
            name = spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str) or not COMPONENT_NAME.match(name) or name in names:
                raise BundleError(f"{where}: each component needs a distinct plain name (letters, digits, . _ -)")
            names.add(name)
            weight, how, t = spec.get("weight"), spec.get("normalise"), spec.get("temperature", 1.0)
            if type(weight) not in (int, float) or not 0.0 <= weight <= 1.0 or how not in NORMALISATIONS \
                    or type(t) not in (int, float) or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
                raise BundleError(f"{where}: component {name}: weight must be a number in [0, 1], normalise one "
                                  f"of {', '.join(NORMALISATIONS)} and temperature in [{MIN_TEMPERATURE}, "
                                  f"{MAX_TEMPERATURE}]")
            path = manifest.file(f"components/{name}/manifest.json").parent
            sub = load_bundle(path, verify=False)  # the fusion's manifest covers every file; its loader verifies
            try:
                kind = kinds.get(sub.kind)
            except kinds.UnknownKindError as exc:
                raise BundleError(f"{where}: component {name}: {exc}") from exc
            if kind.role != "recommender" or kind.load is None or sub.kind == FUSION_MODEL:
                raise BundleError(f"{where}: component {name} is a {sub.kind[:80]!r} bundle, not a recommender")
            rec = kinds.call_supported(kinds.resolve(kind.load), path, threads=threads)
            if not len(rec.item_ids):
                raise BundleError(f"{where}: component {name} has an empty catalogue")
            components.append(rec)
            weights.append(float(weight))
            norms.append(how)
            temps.append(float(t))
        if not sum(weights) > 0:
            raise BundleError(f"{where}: the component weights sum to 0")
        return cls(components, weights, norms, manifest, temps)
