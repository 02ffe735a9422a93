"""Loading diffusers pipelines for the commands (local files only, or built-in tiny ones) and what a pipeline
tells about its model: the schedule model hint and the prompt length the cost model needs."""

from __future__ import annotations

from ..errors import EcadError

TINY_PREFIX = "tiny:"


def device_dtype(device: str | None, dtype: str):
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        if str(dev).startswith("cuda"):
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dt = torch.float32
    else:
        dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    return dev, dt


def load_pipeline(model: str, device: str | None = None, dtype: str = "auto"):
    """A diffusers pipeline from a local folder / cached model id (never downloads) or ``tiny:<name>``.

    Returns (pipeline, model hint for schedules or None).
    """
    dev, dt = device_dtype(device, dtype)
    if model.startswith(TINY_PREFIX):
        from .tiny import tiny_pipeline

        pipe = tiny_pipeline(model[len(TINY_PREFIX) :])
        hint = None  # tiny random weights: not a real architecture's schedule
    else:
        try:
            from diffusers import DiffusionPipeline
        except ImportError:
            raise EcadError("this command needs the 'diffusers' package (pip install diffusers transformers)") from None
        try:
            pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, torch_dtype=dt)
        except (OSError, ValueError) as e:
            raise EcadError(
                f"cannot load a diffusers pipeline from {model!r} with local files only: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        hint = model_hint(pipe)
    if getattr(pipe, "transformer", None) is None:
        raise EcadError(
            f"{model!r}: the pipeline has no transformer (ECAD caches DiT blocks; got {type(pipe).__name__})"
        )
    pipe = pipe.to(dev)
    if pipe.transformer.dtype != dt:
        pipe = pipe.to(dtype=dt)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe, hint


def _adapter(pipe):
    from .adapters import adapter_class

    tr = getattr(pipe, "transformer", None)
    cls = adapter_class(tr) if tr is not None else None
    return cls(tr) if cls is not None else None


def model_hint(pipe) -> str | None:
    """The schedule model hint of a pipeline (``pixart-sigma``), from its family's adapter; None if unknown."""
    ad = _adapter(pipe)
    return ad.variant_of(pipe) if ad is not None else None


def text_tokens(pipe, gen=None) -> int | None:
    """The prompt length ``pipe`` pads to (``gen``: the generate driver, whose ``extra`` are the call's
    arguments); None: the architecture's default."""
    ad = _adapter(pipe)
    return ad.text_tokens(pipe, getattr(gen, "extra", None)) if ad is not None else None
