"""Statistics for claims: seeded bootstrap intervals, paired and permutation tests, Holm, verdicts,
and the claim builders analyses declare their papers' claims with (numpy/scipy/pandas only)."""

from .bootstrap import (
    LEVEL,
    N_RESAMPLES,
    Interval,
    bootstrap_ci,
    clopper_pearson,
    n_for_width,
    n_to_halve,
    paired_bootstrap_ci,
    two_sample_bootstrap_ci,
)
from .claims import (
    CLAIM_COLUMNS,
    Claim,
    apply_holm,
    claims_frame,
    concat_claims,
    empty_claims,
    mean_vs_zero,
    paired_change,
    rate_vs_control,
    scores_vs_permutation,
    share_vs,
    verdict_counts,
)
from .holm import holm
from .significance import (
    TestResult,
    binomial_test,
    mcnemar_exact,
    permutation_pvalue,
    permutation_test,
    sign_flip_test,
    wilcoxon_signed_rank,
)
from .verdict import ALPHA, VERDICT_RULE, VERDICTS, interval_verdict, verdict, verdict_reason

__all__ = [
    "ALPHA", "CLAIM_COLUMNS", "LEVEL", "N_RESAMPLES", "VERDICTS", "VERDICT_RULE",
    "Claim", "Interval", "TestResult",
    "apply_holm", "binomial_test", "bootstrap_ci", "claims_frame", "clopper_pearson", "concat_claims",
    "empty_claims", "holm", "interval_verdict", "mcnemar_exact", "mean_vs_zero", "n_for_width", "n_to_halve",
    "paired_bootstrap_ci", "paired_change", "permutation_pvalue", "permutation_test", "rate_vs_control",
    "scores_vs_permutation", "share_vs", "sign_flip_test", "two_sample_bootstrap_ci", "verdict",
    "verdict_counts", "verdict_reason", "wilcoxon_signed_rank",
]
