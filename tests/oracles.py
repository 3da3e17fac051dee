"""Second implementations the tests compare the bounded evaluation with (not part of the package).

:func:`comparison_table` materialises one column per method: the unbounded path, for small sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from exfiqa.evaluation.metrics import pair_quality
from exfiqa.evaluation.pairs import AllPairs
from exfiqa.study import Study


def pair(study: Study, dataset: str, values: NDArray[Any]) -> NDArray[np.float32]:
    """Pair quality (min, float32) of each comparison from per-sample values, (N,) or (N, K).

    Template benchmarks first take the min over each template's samples. Materialises one value
    per comparison (what :meth:`exfiqa.study.Study.order_of` avoids).
    """
    v = np.asarray(study._side_values(dataset, np.asarray(values, dtype=np.float32)))
    comp = study.comparison_set(dataset)
    if isinstance(comp, AllPairs):
        a, b = study._materialised_index(dataset)
    else:
        a, b = comp.a, comp.b
    paired: NDArray[np.float32] = pair_quality(v[a], v[b])  # float32 stays float32
    return paired


def comparison_table(study: Study, dataset: str, fr: str, quality: str) -> pd.DataFrame:
    """Comparison table: ``a, b, mated, similarity`` and the pair quality of every method
    (float32; one column per method, so for small sets)."""
    comp = study.benchmark(dataset).comparisons
    q = study.sample_quality(dataset, quality)
    out = pd.DataFrame({
        "a": comp["a"].to_numpy(), "b": comp["b"].to_numpy(), "mated": comp["mated"].to_numpy(bool),
        "similarity": study.similarity(dataset, fr),
    })
    pairs = pd.DataFrame({m: pair(study, dataset, q[m].to_numpy()) for m in q.columns})
    return pd.concat([out, pairs], axis=1)
