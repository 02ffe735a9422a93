"""Quality evaluation: generate prompt sets with and without a schedule (same seeds) and report latency
and MACs beside PSNR/SSIM/LPIPS to full compute, CLIP score, ImageReward and FID.

ComfyUI-independent; the metrics are ``ecad_core.metrics`` (shared with the search). Entry points:
``run_evaluation`` (any ``generate`` function), ``ecad_core.diffusers.eval.DiffusersImages`` (a diffusers pipeline),
``MetricSuite`` (which metrics, their local weights, why any is skipped), ``write_reports``,
``comparison_grid``; command line ``python -m ecad_core eval``.
"""

from ..prompts import PROMPT_SETS, load_eval_prompts
from .grid import comparison_grid, save_png
from .report import to_csv, to_json_dict, to_markdown, write_reports
from .runner import NO_CACHE, EvaluationResult, ScheduleResult, cost_function, run_evaluation
from .suite import METRICS, MetricSuite, MetricWeights, parse_metrics

__all__ = [
    "METRICS",
    "NO_CACHE",
    "PROMPT_SETS",
    "EvaluationResult",
    "MetricSuite",
    "MetricWeights",
    "ScheduleResult",
    "comparison_grid",
    "cost_function",
    "load_eval_prompts",
    "parse_metrics",
    "run_evaluation",
    "save_png",
    "to_csv",
    "to_json_dict",
    "to_markdown",
    "write_reports",
]
