"""What every hook shares: attach/detach of an instance ``forward``, and the first-use check of re-statements."""

from __future__ import annotations

import functools
import inspect
import types
import weakref

import torch

from ..engine import CacheEngine
from ..engine.compiling import outside_compile
from ..errors import SelfCheckError

_ATTR = "_ecad_unit_hook"


class _ForwardHook:
    """Attaching sets the module's instance ``forward``; detaching restores exactly what was there."""

    name: str
    module: torch.nn.Module | None = None

    def _install(self, module: torch.nn.Module, make_forward):
        """Set ``module.forward = make_forward(current forward)``."""
        if getattr(module, _ATTR, None) is not None:
            raise RuntimeError(
                f"{self.name}: this module already has an ECAD hook; remove the other schedule first (handle.remove())"
            )
        self.module = module
        self._had_instance_forward = "forward" in module.__dict__
        self._previous_forward = module.forward
        module.forward = make_forward(self._previous_forward)
        setattr(module, _ATTR, self)
        return self

    def detach(self) -> None:
        m = self.module
        if m is None:
            return
        if self._had_instance_forward:
            m.forward = self._previous_forward
        else:
            del m.forward
        delattr(m, _ATTR)
        self.module = None


def has_hook(module: torch.nn.Module) -> bool:
    return getattr(module, _ATTR, None) is not None


def restatement_mismatch(ref, mine) -> str | None:
    """None when a re-stated block's output equals the block's own bit for bit, else what differs."""
    if isinstance(ref, (tuple, list)) and isinstance(mine, (tuple, list)) and len(ref) == len(mine):
        for i, (r, m) in enumerate(zip(ref, mine)):
            why = restatement_mismatch(r, m)
            if why:
                return f"output {i}: {why}"
        return None
    if isinstance(ref, torch.Tensor) and isinstance(mine, torch.Tensor) and ref.shape == mine.shape:
        if torch.equal(ref, mine):
            return None
        return f"max abs diff {(ref.float() - mine.float()).abs().max().item():.3g}"
    return (
        f"output {type(ref).__name__} of shape {tuple(getattr(ref, 'shape', ()))} against "
        f"{type(mine).__name__} of shape {tuple(getattr(mine, 'shape', ()))}"
    )


def missing_attr(block: torch.nn.Module, attrs) -> str | None:
    """``"no <attr>"`` for the first of ``attrs`` that ``block`` lacks (a block-hook unfit reason), else None."""
    for attr in attrs:
        if getattr(block, attr, None) is None:
            return f"no {attr}"
    return None


# Blocks whose re-statement matched their own forward bit for bit, keyed by what the result depends on: the
# re-statement, the block's forward (another library version, or a test's patch, is checked anew) and the call's
# shape key (``call_key``: tensor shapes, dtypes and devices, argument names, the patches present; fp16/bf16
# matmuls round by memory layout, and a new argument or patch may change what the block computes). Every block is
# checked on its first call with each key, as a mismatch can be data-dependent (one block equal, the next not);
# once per process, so re-applying a schedule to the same model costs nothing.
_VERIFIED: weakref.WeakKeyDictionary[torch.nn.Module, set] = weakref.WeakKeyDictionary()
_SCALARS = (int, str, bool, type(None))


def call_key(value, depth: int = 0):
    """A cheap hashable summary of a block call's inputs: tensors by (shape, dtype, device), dicts by their keys
    and summarised values, short lists and tuples element by element, ints/strings as they are, anything else
    (floats, functions, objects) by its type name: what a re-statement's fitness can depend on, not the data."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device.type, value.device.index)
    if isinstance(value, _SCALARS):
        return value
    if depth >= 6:  # (args, kwargs) -> a dict argument -> its wrapper -> that wrapper's captured dict -> its values
        return type(value).__name__
    if isinstance(value, (dict, list, tuple)) and len(value) > 32:
        return (type(value).__name__, len(value))
    if isinstance(value, dict):
        return tuple(sorted(((str(k), call_key(v, depth + 1)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(call_key(v, depth + 1) for v in value)
    if isinstance(value, types.FunctionType) and value.__closure__:
        # a wrapper's captured keyword arguments (ComfyUI's block_wrap passes FLUX blocks ``extra_kwargs`` such as
        # ``modulation_dims`` this way, outside the arguments a block hook sees)
        held = [c.cell_contents for c in value.__closure__ if _cell_dict(c)]
        return ("function",) + tuple(call_key(d, depth + 1) for d in held)
    return type(value).__name__


def _cell_dict(cell) -> bool:
    try:
        return isinstance(cell.cell_contents, dict)
    except ValueError:  # an empty cell
        return False


def check_once(block: torch.nn.Module, restatement, forward, key, check) -> None:
    """``check()``, unless ``block``'s ``restatement`` already matched this ``forward`` on a call with this shape
    ``key`` in this process (``check`` raises on a mismatch). A tensor as ``key`` stands for its device and dtype."""
    if isinstance(key, torch.Tensor):
        key = (key.device.type, key.dtype)
    full = (restatement, forward, key)
    seen = _VERIFIED.setdefault(block, set())
    if full not in seen:
        check()
        seen.add(full)


def forget_verified() -> None:
    """Check every block again at its next call (tests)."""
    _VERIFIED.clear()


class BlockHook(_ForwardHook):
    """A block whose forward is re-stated so that a unit's input is built only when the unit computes.

    Serves units ``unit`` .. ``unit + 2`` of one block. Subclasses give ``_restated`` (the block's
    forward with its units through ``engine.call_lazy``), ``FAMILY`` (for messages), ``PARAMETERS``
    (the block forward's parameter names it re-states) and ``_unfit`` (configuration checks).
    """

    FAMILY = "block"
    PARAMETERS: tuple[str, ...] = ()
    # submodules whose forward the re-statement does not call (it calls their parts): a wrapped one is unfit
    BYPASSED: tuple[str, ...] = ()

    def __init__(self, engine: CacheEngine, unit: int, name: str):
        self.engine, self.unit, self.name = engine, unit, name

    @classmethod
    def unfit_reason(cls, block: torch.nn.Module) -> str | None:
        """Why ``block`` is not the configuration the re-statement covers (None: it is)."""
        why = cls._unfit(block)
        if why:
            return why
        why = cls._signature_unfit(block)
        if why:
            return why
        # e.g. accelerate's offload hook, which the re-statement would bypass
        for path in ("",) + cls.BYPASSED:
            if "forward" in (block.get_submodule(path) if path else block).__dict__:
                return f"{path}'s forward is already wrapped" if path else "its forward is already wrapped"
        return None

    @classmethod
    def _signature_unfit(cls, block: torch.nn.Module) -> str | None:
        """The forward must take the parameters the re-statement takes (an older diffusers' may not)."""
        try:
            params = list(inspect.signature(type(block).forward).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names = {p.name for p in params}
        any_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        missing = [n for n in cls.PARAMETERS if n not in names and not any_kw]
        extra = [
            p.name
            for p in params
            if p.name not in cls.PARAMETERS
            and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if missing or extra:
            return (
                f"its forward takes ({', '.join(p.name for p in params)}), the re-statement "
                f"({', '.join(cls.PARAMETERS)})"
            )
        return None

    @classmethod
    def _unfit(cls, block: torch.nn.Module) -> str | None:
        return None

    def attach(self, block: torch.nn.Module) -> BlockHook:
        engine, checked = self.engine, [False]
        own_forward = type(block).forward

        def make_forward(original):
            @functools.wraps(original)
            def forward(*args, **kwargs):
                if not engine.active_for():
                    return original(*args, **kwargs)
                if not checked[0]:
                    x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
                    check_once(block, type(self), own_forward, x, lambda: self._check(original, args, kwargs))
                    checked[0] = True
                return self._restated(*args, **kwargs)

            return outside_compile(forward)

        return self._install(block, make_forward)

    def _restated(self, *args, **kwargs):
        raise NotImplementedError

    def _check(self, original, args, kwargs) -> None:
        with self.engine.paused():
            ref = original(*args, **kwargs)
            try:
                mine = self._restated(*args, **kwargs)
            except TypeError as e:  # the block's signature changed
                raise SelfCheckError(
                    f"ECAD self-check failed: {self.name}'s forward takes other arguments "
                    f"than this release's {self.FAMILY} block re-statement ({e})"
                ) from None
        why = restatement_mismatch(ref, mine)
        if why:
            raise SelfCheckError(
                f"ECAD self-check failed: the {self.FAMILY} block re-statement differs from {self.name}'s own "
                f"forward ({why}); this diffusers version is not supported by this ECAD release - refusing to "
                f"produce a different image"
            )
