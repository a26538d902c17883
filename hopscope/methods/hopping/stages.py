"""The paper's resolution stages per query, as tidy columns (Biran et al. 2024, Fig. 4 and its code).

* ``e1_resolved_layer`` ("first hop resolved"): the first source layer from which the Patchscope decodes e2
  at t1 (e1's last token);
* ``info_propagation_layer``: the mean of the available ones of ``knockout_layer`` (the first window centre
  whose knockout of the last position's attention to t1 has an effect), ``attn_e2_layer`` (the first layer
  whose attention output at the last position ranks e2 top-1) and ``e2_at_last_layer`` (the first source layer
  from which the Patchscope decodes e2 at the last position);
* ``e3_resolved_layer`` ("second hop resolved"): the first source layer from which the Patchscope decodes e3
  at the last position;
* ``prediction_extracted_layer``: the first layer whose MLP output at the last position ranks the model's own
  prediction (its first greedy token) top-1; defined whether or not the composition is correct.

A stage the query never reaches is NaN (the paper leaves such queries out of that stage's box).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hopscope.methods.hopping.patchscope import first_source_layer
from hopscope.methods.hopping.projection import first_top1

STAGES = ("e1_resolved_layer", "info_propagation_layer", "e3_resolved_layer", "prediction_extracted_layer")
STAGE_LABELS = {"e1_resolved_layer": "first hop resolved", "info_propagation_layer": "information propagation",
                "e3_resolved_layer": "second hop resolved", "prediction_extracted_layer": "prediction extracted"}
PROPAGATION = ("knockout_layer", "attn_e2_layer", "e2_at_last_layer")


def resolution_stages(qids: list[str], groups: dict[str, str], patchscope_layers: pd.DataFrame,
                      knockout: pd.DataFrame, projections: pd.DataFrame, target: str = "description") -> pd.DataFrame:
    """One row per query: its group, every stage's layer and the pieces of the propagation stage."""
    ko = knockout.set_index("qid")["first_effect_layer"] if len(knockout) else pd.Series(dtype=float)
    preds = projections.drop_duplicates("qid").set_index("qid")["prediction"] if len(projections) else {}
    rows = []
    for qid in qids:
        row = {"qid": qid, "group": groups.get(qid, ""),
               "e1_resolved_layer": first_source_layer(patchscope_layers, qid, target, "e1", "e2"),
               "e2_at_last_layer": first_source_layer(patchscope_layers, qid, target, "last", "e2"),
               "e3_resolved_layer": first_source_layer(patchscope_layers, qid, target, "last", "e3"),
               "knockout_layer": float(ko.get(qid, np.nan)),
               "attn_e2_layer": first_top1(projections, qid, "attn_out", "e2_rank"),
               "prediction_extracted_layer": first_top1(projections, qid, "mlp_out", "prediction_rank"),
               "prediction": preds.get(qid, "") if len(preds) else ""}
        parts = [row[c] for c in PROPAGATION if np.isfinite(row[c])]
        row["info_propagation_layer"] = float(np.mean(parts)) if parts else np.nan
        rows.append(row)
    cols = ["qid", "group", *STAGES, *PROPAGATION, "prediction"]
    return pd.DataFrame(rows, columns=cols)
