"""The knowledge filter as an analysis of its own (registry name "knowledge"): groups, accuracies, shortcuts.

    from hopscope.methods.hopping import knowledge_analysis
    result = knowledge_analysis.run(lm, settings=knowledge_analysis.KnowledgeSettings.quick())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping import report
from hopscope.methods.hopping.analysis import plan_knowledge, work_knowledge
from hopscope.methods.hopping.settings import KnowledgeSettings
from hopscope.pipeline import Analysis, Context, Stage, execute
from hopscope.results import Result

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

__all__ = ["ANALYSIS", "KnowledgeSettings", "run"]


def _prepare(data: Any, settings: KnowledgeSettings) -> list:
    settings.validate("custom")
    return Q.prepare(data, settings)


def _finish(ctx: Context) -> Result:
    result = Result("knowledge", ctx.settings.to_dict(), {"knowledge": ctx.tables["knowledge"]})
    report.complete_knowledge(result)
    return result


ANALYSIS = Analysis("knowledge", KnowledgeSettings, stages=[Stage("knowledge", plan_knowledge, work_knowledge)],
                    finish=_finish, prepare=_prepare,
                    title="Knowledge filter: first hop, second hop, composition and shortcuts")


def run(lm: "LoadedModel", data: Any = None, settings: KnowledgeSettings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """The knowledge filter on ``data`` (or world facts built from the settings)."""
    return execute(ANALYSIS, lm, data, settings if settings is not None else KnowledgeSettings(),
                   run_folder=run_folder, progress=progress)
