"""Repair that generalises: choose each repair policy on training queries, score it on held-out ones.

Every repair the four papers report is an oracle, chosen and scored on the same prompts. Here each policy is
chosen on a training split of the knowledge filter's correct and incorrect two-hop queries and scored on a
held-out split that shares no query and no bridge entity with it: a fixed back-patch (Biran et al. 2024), the
model's own first-hop answer injected as a memory beside the gold bridge and a random memory (Sakarvadia et al.
2023), the recall analysis's final-layer mitigation (Lv et al. 2024), and no repair (docs/repair.md).

    import hopscope
    from hopscope.methods import repair
    lm = hopscope.load_model()
    result = repair.run(lm, settings=repair.Settings.study())
    result.tables["summary"]     # fix / break / net with 95% intervals, McNemar p, per policy
    result.claims                # repair.<policy>_beats_none, repair.<policy>_beats_random

Parts: :mod:`.settings`, :mod:`.split` (train / held-out by entity), :mod:`.memories`, :mod:`.mitigations`,
:mod:`.policies` (engine interventions), :mod:`.decode`, :mod:`.choose`, :mod:`.summary`, :mod:`.analysis`
(the stages), :mod:`.claims`, :mod:`.report`.
"""

from hopscope.methods.repair.analysis import ANALYSIS, run
from hopscope.methods.repair.settings import Settings

__all__ = ["ANALYSIS", "Settings", "run"]
