"""Errors the backend raises for bad input: each names where and what is wrong."""


class EcadError(Exception):
    """Base class of the backend's user-facing errors."""


class ScheduleError(EcadError, ValueError):
    """A schedule file or object is invalid. ``source`` names the file (or object)."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class ModelMismatchError(EcadError, ValueError):
    """A schedule does not fit the model it is applied to."""


class SelfCheckError(EcadError, RuntimeError):
    """A patched model's all-recompute output differs from the original model."""


class SearchSettingsError(EcadError, ValueError):
    """A search setting (population, generations, prompts, warm start, ...) is invalid."""


class CheckpointError(EcadError, ValueError):
    """A checkpoint in the output folder cannot be used (corrupt, other version, other settings)."""


class EvaluationError(EcadError, RuntimeError):
    """An evaluator broke its contract (wrong number of losses, wrong output count, ...)."""
