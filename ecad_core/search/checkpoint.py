"""Persistence of a search: the checkpoint, ``progress.json`` and ``evaluations.csv``.

``<out>/checkpoint.safetensors`` is rewritten atomically after every generation.
It holds data only, nothing that runs as code: arrays (the memo; NSGA-II's
surviving population with its objectives, ranks and crowding distances) and,
as JSON in the safetensors metadata, the settings, the generation, the history
and the algorithm's random generator state (numpy's bit-generator state dict).
A checkpoint is tied to the pymoo version that wrote it (the operators' use of
the generator may change between versions). An old pickle checkpoint
(``checkpoint.pkl``) is refused, never loaded: such a search must be started
over. Everything read back is type- and shape-checked; anything unusable is a
``CheckpointError`` naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .problem import GenomeSpace, tell

log = logging.getLogger("ecad.search")

CHECKPOINT_FILE = "checkpoint.safetensors"
# what earlier versions wrote: a pickle, refused (loading a pickle can run code)
LEGACY_CHECKPOINT_FILES = ("checkpoint.pkl",)
PROGRESS_FILE = "progress.json"
EVALUATIONS_FILE = "evaluations.csv"
CHECKPOINT_FORMAT = "comfyui-ecad/search-checkpoint"
CHECKPOINT_VERSION = 2
_META_KEY = "comfyui-ecad"  # the safetensors metadata entry holding the JSON part


def pymoo_version() -> str:
    import pymoo

    return getattr(pymoo, "__version__", "?")


# per-individual attributes NSGA-II reads when it mates the survivors (besides X and F)
_POP_DATA = {"rank": np.int64, "crowding": np.float64, "n_gen": np.int64, "n_iter": np.int64}


def snapshot(algorithm) -> dict:
    """NSGA-II after a completed generation, as plain arrays and the generator state."""
    pop = algorithm.pop
    snap = {
        "X": np.ascontiguousarray(pop.get("X"), dtype=bool),
        "F": np.ascontiguousarray(pop.get("F"), dtype=np.float64),
        "algorithm_n_iter": int(algorithm.n_iter),
        "rng": _plain(algorithm.random_state.bit_generator.state),
    }
    for k, dt in _POP_DATA.items():
        snap[k] = np.ascontiguousarray(pop.get(k), dtype=dt)
    return snap


def restore(algorithm, snap: dict) -> None:
    """Make a freshly set-up NSGA-II continue exactly where ``snap`` was taken."""
    from pymoo.core.population import Population

    pop = Population.new("X", snap["X"])
    tell(algorithm, pop, snap["F"])
    for k in _POP_DATA:
        pop.set(k, snap[k])
    algorithm.pop = pop
    algorithm.off = None
    algorithm.n_iter = snap["algorithm_n_iter"]
    algorithm.is_initialized = True
    algorithm.random_state.bit_generator.state = snap["rng"]
    algorithm._set_optimum()


def _plain(state: dict) -> dict:
    """A bit-generator state with plain Python values (JSON)."""
    return json.loads(json.dumps(state, default=int))


class SearchState:
    """Everything a checkpoint holds."""

    def __init__(self):
        self.algo: dict | None = None  # snapshot() after the last completed generation (None: none yet)
        self.memo: dict[bytes, list] = {}  # key -> [loss, compute_fraction, first generation]
        self.next_gen = 0  # the generation to run next
        self.history: list[dict] = []
        self.seed_keys: list[bytes] = []
        self.elapsed_s = 0.0  # wall clock over all sessions


START_OVER = "start the search over: delete the file (or the whole folder) or use another output folder"
_MEMO = {
    "memo.key": np.uint8,
    "memo.loss": np.float64,
    "memo.compute_fraction": np.float64,
    "memo.generation": np.int64,
}
_NSGA = {"nsga.X": np.bool_, "nsga.F": np.float64, **{f"nsga.{k}": dt for k, dt in _POP_DATA.items()}}


def _legacy_message(path: Path) -> str:
    return (
        f"{path}: a search checkpoint in the old pickle format. comfyui-ecad no longer reads pickles "
        f"(loading one can run arbitrary code), so this search cannot be resumed; {START_OVER}"
    )


def refuse_legacy(out: Path) -> None:
    """An old pickle checkpoint in the folder stops the search before anything reads it."""
    for name in LEGACY_CHECKPOINT_FILES:
        if os.path.lexists(out / name):
            raise CheckpointError(_legacy_message(out / name))


def save_checkpoint(path: Path, state: SearchState, settings, fp: str, ident: dict, space: GenomeSpace) -> None:
    from safetensors.numpy import save as save_tensors

    klen = (space.length + 7) // 8
    memo = list(state.memo.items())
    tensors: dict[str, Any] = {
        "memo.key": np.frombuffer(b"".join(k for k, _ in memo), np.uint8).reshape(len(memo), klen),
        "memo.loss": np.array([v[0] for _, v in memo], np.float64),
        "memo.compute_fraction": np.array([v[1] for _, v in memo], np.float64),
        "memo.generation": np.array([v[2] for _, v in memo], np.int64),
    }
    nsga = None
    if state.algo is not None:
        tensors.update({name: state.algo[name[5:]] for name in _NSGA})
        nsga = {"n_iter": state.algo["algorithm_n_iter"], "rng": state.algo["rng"]}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "pymoo": pymoo_version(),
        "numpy": np.__version__,
        "fingerprint": fp,
        "ident": ident,
        "settings": settings.to_json(),
        "next_gen": state.next_gen,
        "history": state.history,
        "seed_keys": [k.hex() for k in state.seed_keys],
        "elapsed_s": state.elapsed_s,
        "nsga": nsga,
    }
    data = save_tensors(tensors, metadata={_META_KEY: json.dumps(meta, default=str)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    for name in LEGACY_CHECKPOINT_FILES:  # started over (resume off): the new checkpoint supersedes it
        (path.parent / name).unlink(missing_ok=True)


class _Damaged(Exception):
    pass


def stored_settings(path: Path) -> dict | None:
    """The search settings a checkpoint was written with (its JSON part only, no tensors); None when the file is
    missing, damaged or of another format: ``load_checkpoint`` names those problems."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            stored = json.loads((f.metadata() or {})[_META_KEY])["ident"]["settings"]
    except Exception:  # noqa: BLE001 - any damage: left to load_checkpoint's message
        return None
    return stored if isinstance(stored, dict) else None


def load_checkpoint(path: Path, fp: str, ident: dict, space: GenomeSpace) -> SearchState:
    """The checkpoint's state; CheckpointError naming ``path`` for anything unusable. Reads data only."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the search checkpoint ({e})") from None
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle's protocol header
        raise CheckpointError(_legacy_message(path))
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            text = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - whatever the parser says about a damaged file
        raise CheckpointError(
            f"{path}: not a readable search checkpoint ({type(e).__name__}: {e}); {START_OVER}"
        ) from None
    try:
        d = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested beyond Python's stack
        raise CheckpointError(f"{path}: damaged search checkpoint (its JSON part: {e}); {START_OVER}") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a comfyui-ecad search checkpoint; {START_OVER}")
    if d.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {d.get('version')!r}; this build reads {CHECKPOINT_VERSION}; {START_OVER}"
        )
    if d.get("pymoo") != pymoo_version():
        raise CheckpointError(
            f"{path}: written with pymoo {d.get('pymoo')}, this is pymoo {pymoo_version()}; "
            "resume with the same pymoo version or use another output folder"
        )
    if d.get("fingerprint") != fp:
        old: dict[str, Any] = d["ident"] if isinstance(d.get("ident"), dict) else {}
        ident = json.loads(json.dumps(ident, default=str))  # compared as it was stored
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        detail = ""
        if "settings" in diff and isinstance(old.get("settings"), dict):
            so, sn = old["settings"], ident.get("settings", {})
            detail = "; settings: " + ", ".join(
                f"{k} {so.get(k)!r} -> {sn.get(k)!r}" for k in sorted(set(so) | set(sn)) if so.get(k) != sn.get(k)
            )
        raise CheckpointError(
            f"{path}: this folder holds a search with other settings (differs in "
            f"{', '.join(diff) or 'details'}{detail}); use another output folder, or delete "
            "the checkpoint to start over"
        )
    if d.get("numpy") != np.__version__:
        log.warning(
            "ECAD search: %s was written with numpy %s, this is numpy %s: the resumed search may draw "
            "other offspring than an uninterrupted one",
            path,
            d.get("numpy"),
            np.__version__,
        )
    try:
        return _parse_state(d, tensors, space)
    except _Damaged as e:
        raise CheckpointError(f"{path}: damaged search checkpoint ({e}); {START_OVER}") from None
    except Exception as e:  # noqa: BLE001 - a check above missed something: still the file's fault
        raise CheckpointError(f"{path}: damaged search checkpoint ({type(e).__name__}: {e}); {START_OVER}") from None


def _parse_state(d: dict[str, Any], t: dict, space: GenomeSpace) -> SearchState:
    """Type and shape checks of everything the resumed search will use."""

    def need(ok, what):
        if not ok:
            raise _Damaged(what)

    def integer(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def array(name, dtype, shape):  # shape: None for any length on that axis
        a = t.get(name)
        need(
            isinstance(a, np.ndarray)
            and a.dtype == dtype
            and a.ndim == len(shape)
            and all(w is None or w == n for w, n in zip(shape, a.shape)),
            f"{name}: want {np.dtype(dtype).name} {shape}, got "
            f"{f'{a.dtype} {a.shape}' if isinstance(a, np.ndarray) else 'nothing'}",
        )
        return a

    st = SearchState()
    st.next_gen = d.get("next_gen")
    need(integer(st.next_gen) and st.next_gen >= 0, f"next_gen {st.next_gen!r}")
    st.history = d.get("history")  # type: ignore[assignment]  # checked next
    need(
        isinstance(st.history, list)
        and len(st.history) == st.next_gen
        and all(isinstance(h, dict) for h in st.history),
        "history: want one record per completed generation",
    )
    st.elapsed_s = d.get("elapsed_s")
    need(
        isinstance(st.elapsed_s, (int, float))
        and not isinstance(st.elapsed_s, bool)
        and math.isfinite(st.elapsed_s)
        and st.elapsed_s >= 0,
        f"elapsed_s {st.elapsed_s!r}",
    )
    st.elapsed_s = float(st.elapsed_s)
    klen = (space.length + 7) // 8
    seeds: Any = d.get("seed_keys")
    need(
        isinstance(seeds, list) and all(isinstance(k, str) and len(k) == 2 * klen for k in seeds),
        f"seed_keys: want hex strings of {klen} bytes",
    )
    try:
        st.seed_keys = [bytes.fromhex(k) for k in seeds]
    except ValueError as e:
        raise _Damaged(f"seed_keys: {e}") from None

    want = set(_MEMO) | (set(_NSGA) if st.next_gen > 0 else set())
    need(set(t) == want, f"arrays {sorted(set(t) ^ want)} missing or unexpected")
    key = array("memo.key", np.uint8, (None, klen))
    n = key.shape[0]
    loss = array("memo.loss", np.float64, (n,))
    frac = array("memo.compute_fraction", np.float64, (n,))
    gen = array("memo.generation", np.int64, (n,))
    need(not np.isnan(loss).any(), "memo.loss: NaN")
    need((np.isfinite(frac) & (frac > 0) & (frac <= 1)).all(), "memo.compute_fraction: want values in (0, 1]")
    need(((gen >= 0) & (gen <= st.next_gen)).all(), "memo.generation: out of range")
    # the padding bits of a key are zero, or the same genome would have two keys
    need(
        np.array_equal(np.packbits(np.unpackbits(key, axis=1, count=space.length), axis=1), key),
        "memo.key: padding bits set",
    )
    keys = [row.tobytes() for row in key]
    need(len(set(keys)) == n, "memo.key: a genome listed twice")
    st.memo = {k: [float(lo), float(fr), int(g)] for k, lo, fr, g in zip(keys, loss, frac, gen)}

    nsga: Any = d.get("nsga")
    if st.next_gen == 0:
        need(nsga is None, "nsga: state before the first generation ended")
        return st
    need(
        isinstance(nsga, dict) and integer(nsga.get("n_iter")) and nsga["n_iter"] == st.next_gen + 1,
        "nsga.n_iter: want the generation count + 1",
    )
    rng = nsga.get("rng")
    need(isinstance(rng, dict) and rng.get("bit_generator") == "PCG64", "nsga.rng: want a PCG64 state")
    try:
        np.random.PCG64().state = rng  # numpy checks every field; a throw-away generator
    except (TypeError, ValueError, KeyError) as e:
        raise _Damaged(f"nsga.rng: {e}") from None
    X = array("nsga.X", np.bool_, (None, space.length))
    p = X.shape[0]
    need(p >= 1 and (X.view(np.uint8) <= 1).all(), "nsga.X: want a population of 0/1 genomes")
    F = array("nsga.F", np.float64, (p, 2))
    need(np.isfinite(F).all(), "nsga.F: not finite")
    snap = {"X": X, "F": F, "algorithm_n_iter": nsga["n_iter"], "rng": rng}
    for k, dt in _POP_DATA.items():
        snap[k] = array(f"nsga.{k}", dt, (p,))
    need(
        (snap["rank"] >= 0).all()
        and not np.isnan(snap["crowding"]).any()
        and (snap["n_gen"] >= 1).all()
        and (snap["n_iter"] >= 1).all(),
        "nsga: rank/crowding/n_gen out of range",
    )
    st.algo = snap
    return st


def write_progress(out: Path, state: SearchState, settings, stopped: str | None = None) -> None:
    d = {
        "generation": state.next_gen - 1,
        "evaluations": len(state.memo),
        "settings": settings.to_json(),
        "stopped": stopped,
        "elapsed_s": round(state.elapsed_s, 3),
        "history": state.history,
    }
    tmp = out / (PROGRESS_FILE + ".tmp")
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / PROGRESS_FILE)


def write_evaluations(path: Path, state: SearchState) -> None:
    lines = ["index,generation,quality_loss,compute_fraction,expected_speedup"]
    for i, (loss, frac, gen) in enumerate(state.memo.values()):
        lines.append(f"{i},{gen},{loss!r},{frac!r},{1.0 / frac!r}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
