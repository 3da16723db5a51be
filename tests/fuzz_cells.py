"""A differential fuzzer: random cells from a seed, every applicable solver vs ``lax.scan``.

``make_case(seed)`` builds a small random recurrence (T ≤ 33, D ≤ 8): a chain of random ops
(elementwise maps, dense / block-diagonal / diagonal matmuls, gathers and scatters in every
out-of-bounds mode, roll, cumsum, sort, where/cond/switch on h, nested scan/fori/while,
custom_jvp / custom_vjp, checkpoint, reduced precision), wrapped as a contractive or a
chaotic update of a (possibly mixed-scale) state, sometimes inside a pytree with matrix,
integer, bool or complex leaves; or a cell that is affine in disguise / only looks affine.

``check_case(case, backend="gpu")`` runs, with the planner on ``backend``'s constants:

* values of every solver the plan says applies, and ``auto``, against ``lax.scan``
  (tolerance per element, scaled by the case's own sensitivity to rounding, so a chaotic
  cell is judged by whether the solver says it converged, not by digits nobody can get);
  when a solver says it converged its own trajectory must satisfy every step per element;
* ``jax.grad`` of a scalar loss against lax.scan's gradient (backward auto / linear / sequential);
* the analysis (sparsity, structure pattern, affinity) against ``jax.jacfwd`` at random,
  saturated, zero and 1e6-scale points;
* exceptions: an ``AutoparError``, or a ``TypeError``/``ValueError`` raised by autopar itself,
  is an acceptable refusal; anything else (IndexError, KeyError, an XLA or JAX-internal error)
  is a crash.

Each finding is a ``Finding(seed, check, cls, solver, detail)``; ``cls`` names a known-open
class where the symptom matches one (``KNOWN``), else ``new:<check>``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import autopar
from autopar import config
from autopar.adjoint import per_step_adjoint

from .oracle import scan_states, tol_for
from .passes_helpers import analyse_cell, jacobian_violations, random_inputs

__all__ = ["Case", "Finding", "make_case", "check_case", "TS", "KNOWN"]

TS = (1, 2, 3, 5, 17, 33)
AUTOPAR_DIR = os.path.dirname(os.path.abspath(autopar.__file__))
PASSES_DIR = os.path.realpath(os.path.join(AUTOPAR_DIR, "passes"))

#: Known-open classes (being fixed on other branches), matched on the finding's text.
KNOWN = {
    "identity-linear-adjoint-vmap": "vmap wrapped function must be passed at least one argument",
    "elk-rank-promotion": "numpy_rank_promotion='raise'",
    "quasi-deer-subfuns": "'subfuns'",
    "custom-vjp-in-cell": "custom_vjp",
    "custom-jvp-in-cell": "custom_jvp",
    "xs-none-length-fallback": "scan got no values to scan over and `length` not provided",
}


@dataclasses.dataclass
class Case:
    seed: int
    cell: Callable
    h0: Any
    xs: Any
    length: int | None
    tags: tuple
    desc: str
    max_T: int | None = None  # as passed to make_case (T's draw depends on it): rebuilds the same case

    @property
    def T(self) -> int:
        return self.length if self.xs is None else jax.tree_util.tree_leaves(self.xs)[0].shape[0]


@dataclasses.dataclass
class Finding:
    seed: int
    check: str  # values / residual / grad / sparsity / structure / affine / crash
    cls: str
    solver: str
    detail: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- the generator ----------------------------------------------------------------------------
ELEMENTWISE = ("tanh", "sigmoid", "exp", "relu", "abs", "square", "sin")


def _elementwise(name):
    return {
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "exp": lambda z: jnp.exp(jnp.tanh(z)) - 1.0,  # bounded argument
        "relu": jax.nn.relu,
        "abs": jnp.abs,
        "square": lambda z: 0.5 * jnp.tanh(z) ** 2,
        "sin": jnp.sin,
    }[name]


@jax.custom_jvp
def _softclip(z):
    return jnp.tanh(z)


@_softclip.defjvp
def _softclip_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    y = jnp.tanh(z)
    return y, (1 - y**2) * dz  # consistent with the primal


@jax.custom_jvp
def _ste_round(z):
    return jnp.round(z * 4.0) / 4.0


@_ste_round.defjvp
def _ste_round_jvp(primals, tangents):
    return _ste_round(primals[0]), tangents[0]  # straight-through: claims identity


@jax.custom_vjp
def _clip_grad(z):
    return z


def _clip_grad_fwd(z):
    return z, None


def _clip_grad_bwd(_, g):
    return (jnp.clip(g, -0.5, 0.5),)


_clip_grad.defvjp(_clip_grad_fwd, _clip_grad_bwd)


def _bad_idx(rng, D, n, in_bounds):
    if in_bounds:
        return np.asarray(rng.integers(0, D, size=n), np.int32)
    pool = list(range(D)) + [D, D + 3, -1, -D - 2]
    return np.asarray(rng.choice(pool, size=n), np.int32)


def _op(rng, D, dtype):
    """One random op z -> z (shape (D,)) that may also read h (the normalised state) and x."""
    kind = rng.choice([
        "ew", "ew", "ew", "dense", "block", "diag", "get", "take", "set", "add", "roll", "cumsum", "sort",
        "where", "cond", "switch", "scan", "fori", "while", "cjvp", "ste", "cvjp", "remat", "lowp",
    ])
    name = str(kind)
    if kind == "ew":
        f = _elementwise(str(rng.choice(ELEMENTWISE)))
        return name, lambda z, h, x: f(z)
    if kind == "dense":
        W = jnp.asarray(rng.normal(size=(D, D)) * 0.6 / math.sqrt(D), dtype)
        return name, lambda z, h, x: z @ W
    if kind == "block":
        b = int(rng.choice([d for d in (1, 2, 4) if D % d == 0]))
        B = jnp.asarray(rng.normal(size=(D // b, b, b)) * 0.6 / math.sqrt(b), dtype)
        perm = rng.permutation(D) if rng.random() < 0.5 else np.arange(D)
        inv = np.argsort(perm)
        return name, lambda z, h, x: jnp.einsum("gi,gij->gj", z[perm].reshape(D // b, b), B).reshape(D)[inv]
    if kind == "diag":
        a = jnp.asarray(rng.uniform(-0.9, 0.9, size=D), dtype)
        return name, lambda z, h, x: a * z
    if kind == "get":
        mode = rng.choice(["clip", "fill", "promise_in_bounds", None])
        idx = _bad_idx(rng, D, D, mode == "promise_in_bounds")
        name = f"get[{mode}]"
        if mode == "fill":
            return name, lambda z, h, x: z.at[idx].get(mode="fill", fill_value=0.25)
        return name, lambda z, h, x: z.at[idx].get(mode=None if mode is None else str(mode))
    if kind == "take":
        mode = str(rng.choice(["fill", "clip", "wrap"]))
        idx = _bad_idx(rng, D, D, False)
        return f"take[{mode}]", lambda z, h, x: jnp.take(z, idx, mode=mode)
    if kind in ("set", "add"):
        mode = rng.choice(["drop", "clip", "promise_in_bounds", None])
        idx = _bad_idx(rng, D, max(1, D // 2), mode == "promise_in_bounds")
        src = rng.integers(0, D, size=len(idx))
        m = None if mode is None else str(mode)

        def f(z, h, x):
            upd = 0.5 * jnp.tanh(h[src])
            ref = z.at[idx]
            return ref.set(upd, mode=m) if kind == "set" else ref.add(upd, mode=m)

        return f"{kind}[{mode}]", f
    if kind == "roll":
        s = int(rng.integers(-D, D + 1))
        return name, lambda z, h, x: jnp.roll(z, s)
    if kind == "cumsum":
        return name, lambda z, h, x: jnp.cumsum(z) / D
    if kind == "sort":
        return name, lambda z, h, x: jnp.sort(z)
    if kind == "where":
        return name, lambda z, h, x: jnp.where(h > 0, z, 0.5 * jnp.tanh(z))
    if kind == "cond":
        return name, lambda z, h, x: jax.lax.cond(jnp.sum(h) > 0, lambda u: 0.5 * u, jnp.tanh, z)
    if kind == "switch":
        branches = [lambda u: 0.5 * u, jnp.sin, lambda u: jnp.roll(u, 1) * 0.7]

        def f(z, h, x):
            i = jnp.clip(jnp.floor(h[0] * 2).astype(jnp.int32), 0, 2)
            return jax.lax.switch(i, branches, z)

        return name, f
    if kind == "scan":
        return name, lambda z, h, x: jax.lax.scan(lambda c, _: (jnp.tanh(0.8 * c + 0.1 * h), None), z, None, length=2)[0]
    if kind == "fori":
        return name, lambda z, h, x: jax.lax.fori_loop(0, 2, lambda i, c: 0.9 * c + 0.1 * jnp.sin(c), z)
    if kind == "while":
        def f(z, h, x):
            return jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, jnp.tanh(c[1]) * 0.9), (0, z))[1]

        return name, f
    if kind == "cjvp":
        return name, lambda z, h, x: _softclip(z)
    if kind == "ste":
        return name, lambda z, h, x: _ste_round(z)
    if kind == "cvjp":
        return name, lambda z, h, x: _clip_grad(z)
    if kind == "remat":
        g = _elementwise(str(rng.choice(ELEMENTWISE)))
        return name, lambda z, h, x: jax.checkpoint(g)(z)
    # lowp
    which = str(rng.choice(["reduce_precision", "bf16", "f16"]))
    if which == "reduce_precision":
        return "reduce_precision", lambda z, h, x: jax.lax.reduce_precision(z, exponent_bits=5, mantissa_bits=7)
    dt = jnp.bfloat16 if which == "bf16" else jnp.float16
    return which, lambda z, h, x: jnp.tanh(z).astype(dt).astype(z.dtype)


def _affine_disguise(rng, D, dtype):
    a = jnp.asarray(rng.uniform(-0.9, 0.9, size=D), dtype)
    perm = rng.permutation(D)
    forms = {
        "h*2-h": lambda h, x: a * (h * 2 - h) + x,
        "where(True)": lambda h, x: a * jnp.where(True, h, 0.0) + x,
        "(h+x)-x": lambda h, x: a * ((h + x) - x) + x,
        "relu(h)-relu(-h)": lambda h, x: a * (jax.nn.relu(h) - jax.nn.relu(-h)) + x,
        "perm-gather": lambda h, x: 0.8 * h[perm] + x,
        "roll+cumsum": lambda h, x: 0.5 * jnp.roll(h, 1) + 0.3 * jnp.cumsum(h) / D + x,
        "fill-get": lambda h, x: 0.7 * h.at[_bad_idx(np.random.default_rng(1), D, D, False)].get(mode="fill", fill_value=0.0) + x,
        "identity": lambda h, x: h + 0.1 * x,
        "h-h (zero J)": lambda h, x: (h - h) + jnp.tanh(x),
        "reshape-T": lambda h, x: 0.6 * (h.reshape(1, D).T @ jnp.ones((1, 1), h.dtype)).reshape(D) + x,
    }
    k = str(rng.choice(sorted(forms)))
    return k, forms[k]


def _looks_affine(rng, D, dtype):
    forms = {
        "bf16-roundtrip": lambda h, x: 0.9 * h.astype(jnp.bfloat16).astype(h.dtype) + x,
        "reduce_precision": lambda h, x: 0.9 * jax.lax.reduce_precision(h, exponent_bits=8, mantissa_bits=3) + x,
        "round": lambda h, x: 0.5 * jnp.round(h * 4) / 4 + x,
        "floor": lambda h, x: 0.5 * jnp.floor(h) + x,
        "ste-round": lambda h, x: 0.5 * _ste_round(h) + x,
        "h*stop_gradient(h)": lambda h, x: 0.3 * h * jax.lax.stop_gradient(jnp.tanh(h)) + x,
        "leaky-where": lambda h, x: 0.8 * jnp.where(h > 0, h, 0.1 * h) + x,
        "clip": lambda h, x: 0.9 * jnp.clip(h, -1.0, 1.0) + x,
        "int-cast": lambda h, x: 0.5 * (h * 8).astype(jnp.int32).astype(h.dtype) / 8 + x,
    }
    k = str(rng.choice(sorted(forms)))
    return k, forms[k]


def make_case(seed: int, max_T: int | None = None, dtype: Any = None) -> Case:
    """A random small recurrence, deterministic in ``seed`` (and ``max_T``, which caps T).
    ``dtype`` overrides the drawn float dtype and nothing else (every other draw is the same):
    the float64 twin of a float32 case tells a structural difference from float32 rounding."""
    rng = np.random.default_rng(seed)
    T = int(rng.choice(TS))
    if max_T is not None and T > max_T:
        T = max(t for t in TS if t <= max_T)
    D = int(rng.choice([1, 2, 3, 4, 6, 8]))
    family = str(rng.choice(["chain"] * 6 + ["disguise", "looks"] + ["chaotic"] * 2))
    drawn = jnp.float64 if rng.random() < 0.25 else jnp.float32
    dtype = drawn if dtype is None else dtype
    mixed = family == "chain" and rng.random() < 0.3
    if mixed:
        scale = jnp.asarray(10.0 ** rng.uniform(-3, 6, size=D), dtype)
    else:
        scale = jnp.asarray(10.0 ** rng.choice([-3, 0, 0, 0, 3, 6]), dtype) * jnp.ones(D, dtype)
    tags = [family]
    desc = [f"T={T} D={D} {np.dtype(dtype).name}"]

    if family in ("disguise", "looks"):
        k, g = (_affine_disguise if family == "disguise" else _looks_affine)(rng, D, dtype)
        desc.append(f"{family}:{k}")
        core = g
        scale = jnp.ones(D, dtype)
    else:
        n_ops = int(rng.integers(1, 4))
        ops = [_op(rng, D, dtype) for _ in range(n_ops)]
        if any(n in ("bf16", "f16", "reduce_precision", "ste") for n, _ in ops):
            tags.append("lowp")
        if any(n in ("where", "cond", "switch", "ste", "sort") or n.startswith(("get", "take", "set", "add"))
               for n, _ in ops):
            tags.append("piecewise")
        desc.append(" > ".join(n for n, _ in ops))
        U = jnp.asarray(rng.normal(size=(D, D)) * 0.5 / math.sqrt(D), dtype)
        if family == "chaotic":
            gain = float(rng.uniform(2.5, 4.0))
            desc.append(f"chaotic gain={gain:.2f}")

            def core(u, x):
                z = u
                for _, f in ops:
                    z = f(z, u, x)
                return jnp.sin(gain * (z + u) + x @ U)
        else:
            alpha = float(rng.uniform(0.0, 0.8))
            desc.append(f"contractive alpha={alpha:.2f}")

            def core(u, x):
                z = 0.5 * u + x @ U
                for _, f in ops:
                    z = f(z, u, x)
                return alpha * u + (1 - alpha) * 0.9 * jnp.tanh(z)

    if float(jnp.max(scale)) != 1.0 or mixed:
        desc.append("scale=" + ("mixed" if mixed else f"{float(scale[0]):g}"))
    # the state's container
    container = str(rng.choice(["vec"] * 5 + ["dict", "tuple-int", "bool", "int-reads-float", "complex", "mixed-complex",
                                              "xs-tree", "xs-none"]))
    desc.append(container)
    X = rng.normal(size=(T, D))
    xs = jnp.asarray(X, dtype)
    h0v = jnp.asarray(rng.normal(size=D), dtype) * scale
    M = jnp.asarray(rng.normal(size=(2, 3)) * 0.4, dtype)
    A = jnp.asarray(rng.normal(size=(3, 3)) * 0.4, dtype)
    length = None

    def step(h, x):
        return scale * core(h / scale, x)

    if container == "vec":
        cell, h0 = step, h0v
    elif container == "dict":
        def cell(s, x):
            v = step(s["v"], x)
            m = 0.5 * jnp.tanh(s["m"] @ A) + 0.1 * jnp.outer(v[:2] if D >= 2 else jnp.r_[v, v] / scale[0], jnp.ones(3, dtype))
            return {"v": v + 0.01 * jnp.sum(s["m"]) * scale, "m": m}

        h0 = {"v": h0v, "m": M}
    elif container == "tuple-int":
        def cell(s, x):
            v, n = s
            return (step(v, x) + 0.001 * n.astype(dtype) * scale, n + 1 + (x[0] > 0).astype(jnp.int32))

        h0 = (h0v, jnp.asarray(0, jnp.int32))
    elif container == "bool":
        def cell(s, x):
            v, b = s
            return {"v": jnp.where(b, step(v, x), 0.9 * step(v, x)), "b": jnp.logical_xor(b, x[0] > 0)}

        cell = (lambda c: (lambda s, x: (lambda o: (o["v"], o["b"]))(c(s, x))))(cell)
        h0 = (h0v, jnp.asarray(True))
    elif container == "int-reads-float":
        def cell(s, x):
            v, n = s
            return (step(v, x), n + (v[0] > 0).astype(jnp.int32))

        h0 = (h0v, jnp.asarray(0, jnp.int32))
    elif container in ("complex", "mixed-complex"):
        cdt = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
        w = jnp.asarray(0.7 * np.exp(1j * rng.uniform(0, np.pi, size=D)), cdt)

        def zstep(c, x):
            return w * c + jnp.tanh(x).astype(cdt) + 0.1j * jnp.tanh(c)

        c0 = jnp.asarray(rng.normal(size=D) + 1j * rng.normal(size=D), cdt)
        if container == "complex":
            cell, h0 = zstep, c0
        else:
            cell = lambda s, x: (step(s[0], x), zstep(s[1], x))  # noqa: E731
            h0 = (h0v, c0)
    elif container == "xs-tree":
        xs = {"a": xs, "k": jnp.asarray(rng.integers(-2, 3, size=(T,)), jnp.int32)}

        def cell(h, x):
            return step(h, x["a"] + 0.1 * x["k"].astype(dtype))

        h0 = h0v
    else:  # xs-none: inputs closed over, indexed by nothing (a constant drive)
        drive = xs[0]

        def cell(h, x):
            return step(h, drive)

        xs, length, h0 = None, T, h0v
    return Case(seed, cell, h0, xs, length, tuple(tags), "; ".join(desc), max_T)


# ---- the checks -------------------------------------------------------------------------------
def _classify_text(text: str, default: str) -> str:
    for cls, pat in KNOWN.items():
        if pat in text:
            return f"known:{cls}"
    return default


def _acceptable(e: BaseException) -> bool:
    """An autopar refusal: AutoparError, or a TypeError/ValueError raised from autopar's own code."""
    if isinstance(e, autopar.AutoparError):
        return True
    if not isinstance(e, (TypeError, ValueError)) or not str(e).strip():
        return False
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return False
    last = os.path.realpath(tb[-1].filename)
    return last.startswith(AUTOPAR_DIR) or last.startswith(PASSES_DIR)


def _crash(seed, solver, where, e) -> Finding:
    msg = f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
    return Finding(seed, "crash", _classify_text(msg, f"new:crash:{type(e).__name__}"), solver, msg)


def _float_leaves(tree):
    return [l for l in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact)]


def _tol(case) -> float:
    dts = [jnp.asarray(l).dtype for l in _float_leaves(case.h0)]
    t = max(tol_for(d) for d in dts) if dts else 2e-4
    if "lowp" in case.tags:
        t = max(t, tol_for(jnp.bfloat16))
    return t


def _oracle(case):
    return scan_states(case.cell, case.h0, case.xs, length=case.length)


def _sensitivity(case, ref) -> tuple[float, float]:
    """How much the scan's result moves per unit relative perturbation of h0 (rounding
    amplification), as ``(sens, sens_scaled)``. A perturbation that already moves the result by
    O(1) is outside the linear regime: retry smaller, and call the case ill-conditioned (inf) if
    even the smallest does.

    ``sens`` measures the change against 1 + |ref| (the values' error measure); ``sens_scaled``
    against each leaf's own scale, so that a chaotic map on small states (all |h| ~ 1e-3: any
    change is < 1e-2 of 1 + |h|) is seen for what it is — the gradients' conditioning (a Jacobian
    product of 3.7^33 ~ 1e19 behind a bounded forward). Both come from the same perturbed scans."""
    wide = all(jnp.asarray(l).dtype in (jnp.float64, jnp.complex128) for l in _float_leaves(case.h0))
    found = [None, None]  # (1 + |ref|, the leaf's own scale)
    for eps in ((1e-6, 1e-9, 1e-12) if wide else (1e-3, 1e-5)):
        h1 = jax.tree_util.tree_map(
            lambda l: l * (1 + eps) + eps * 1e-3 if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact) else l, case.h0)
        try:
            alt = scan_states(case.cell, h1, case.xs, length=case.length)
        except Exception:  # noqa: BLE001
            break
        worst = [0.0, 0.0]
        for a, b in zip(_float_leaves(alt), _float_leaves(ref)):
            a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
            for k, scale in enumerate((1.0, max(float(np.abs(b).max(initial=0.0)), 1e-30))):
                d = np.abs(a - b) / (scale + np.abs(b))
                worst[k] = max(worst[k], float(d.max(initial=0.0)) if np.all(np.isfinite(d)) else math.inf)
        for k in range(2):
            if found[k] is None and (not math.isfinite(worst[k])):
                found[k] = math.inf
            elif found[k] is None and worst[k] < 1e-2:
                found[k] = worst[k] / eps
        if None not in found:
            break
    return tuple(math.inf if f is None else f for f in found)


def _elementwise_err(got, ref, normwise: float = 0.0) -> tuple[float, str]:
    """max over elements of |got − ref| / (1 + |ref| + normwise·max|ref of the leaf|) (integers:
    exact), and where. ``normwise`` > 0 for gradients: a reverse sweep's rounding error in an
    element is proportional to the leaf's largest entries, not to the element (a float32
    gradient spanning 1e12 … 1e2 has no correct digits in its 1e2 entries, lax.scan's included)."""
    worst, where = 0.0, ""
    gl, rl = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)
    if len(gl) != len(rl):
        return math.inf, "pytree structure differs"
    for k, (g, r) in enumerate(zip(gl, rl)):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape or g.dtype != r.dtype:
            return math.inf, f"leaf {k}: {g.shape}/{g.dtype} vs {r.shape}/{r.dtype}"
        if r.dtype.kind in "biu":
            if not np.array_equal(g, r):
                return math.inf, f"leaf {k} (integer) differs"
            continue
        g64, r64 = g.astype(np.complex128), r.astype(np.complex128)
        big = float(np.abs(r64[np.isfinite(r64)]).max(initial=0.0)) if normwise else 0.0
        d = np.abs(g64 - r64) / (1 + np.abs(r64) + normwise * big)
        d = np.where((np.isnan(d) & np.isnan(r64)) | (g64 == r64), 0.0, d)  # equal infinities agree
        d = np.where(np.isfinite(d), d, np.inf)
        if d.size and d.max() > worst:
            worst = float(d.max())
            i = np.unravel_index(np.argmax(d), d.shape)
            where = f"leaf {k}{list(i)}: got {g[i]!r} want {r[i]!r}"
    return worst, where


def _self_residual(case, hs) -> float:
    """max over t and elements of |h_t − cell(h_{t−1}, x_t)| / (1 + |h_t|) of a returned trajectory."""
    T = case.T
    if T == 0:
        return 0.0
    prev = jax.tree_util.tree_map(lambda a, h: jnp.concatenate([jnp.asarray(a)[None], h[:-1]], 0), case.h0, hs)
    # one compiled program, not an eager op-by-op vmap (each eager op is an XLA compile)
    if case.xs is None:
        fv = jax.jit(jax.vmap(lambda h: case.cell(h, None)))(prev)
    else:
        fv = jax.jit(jax.vmap(case.cell))(prev, case.xs)
    return _elementwise_err(hs, fv)[0]


def _loss_weights(case, seed):
    rng = np.random.default_rng(seed + 7)
    ref = jax.eval_shape(lambda: _oracle(case))
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype) if jnp.issubdtype(s.dtype, jnp.inexact) else None, ref)


def _loss(hs, w):
    tot = 0.0
    for h, wl in zip(jax.tree_util.tree_leaves(hs), jax.tree_util.tree_leaves(w, is_leaf=lambda x: x is None)):
        if wl is None or not jnp.issubdtype(h.dtype, jnp.inexact):
            continue
        tot = tot + jnp.sum(jnp.real(h * wl)) / jnp.maximum(1.0, jax.lax.stop_gradient(jnp.max(jnp.abs(h)))).astype(jnp.float64)
    return tot


def _split_float(tree):
    leaves, td = jax.tree_util.tree_flatten(tree)
    mask = [jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact) for l in leaves]
    return [l for l, m in zip(leaves, mask) if m], (leaves, td, mask)


def _join_float(fl, meta):
    leaves, td, mask = meta
    it = iter(fl)
    return jax.tree_util.tree_unflatten(td, [next(it) if m else l for l, m in zip(leaves, mask)])


def _grads(case, run, w):
    """d loss / d (float leaves of h0, float leaves of xs) where hs = run(h0, xs)."""
    hf, hm = _split_float(case.h0)
    xf, xm = _split_float(case.xs) if case.xs is not None else ([], None)

    def L(hf, xf):
        xs = _join_float(xf, xm) if xm is not None else None
        return _loss(run(_join_float(hf, hm), xs), w)

    g = jax.grad(L, argnums=(0, 1))
    # odd seeds differentiate under an outer jit (autopar sees tracers), even seeds eagerly
    # (autopar's own dispatch); both sides of the comparison alike
    return (jax.jit(g) if case.seed % 2 else g)(hf, xf)


def _pick_solvers(rep, seed, mode):
    """Which solvers to run: ``all`` that apply, or a ``sample`` (auto, the cheap exact ones, and
    one Newton-family solver rotating with the seed — a Newton compile costs seconds)."""
    applies = [c.solver for c in rep.candidates if c.applies]
    if mode == "all":
        return applies + ["auto"]
    newton = [s for s in applies if s not in ("sequential", "linear")]
    out = [s for s in applies if s == "linear"] + ["auto"]
    if newton:
        out.append(newton[seed % len(newton)])
    return list(dict.fromkeys(out))


def _fn(case, solver, backward):
    """One ``Parallelized`` per (case, solver, backward), so the gradient check reuses the traces."""
    cache = case.__dict__.setdefault("_fns", {})
    if (solver, backward) not in cache:
        opts = {} if backward is None else {"backward": backward}
        cache[(solver, backward)] = autopar.parallelize(case.cell, solver=solver, **opts)
    return cache[(solver, backward)]


def check_values(case, backend="gpu", mode="sample"):
    findings, infos = [], []
    seed = case.seed
    ref = _oracle(case)
    tol = _tol(case)
    sens, sens_scaled = _sensitivity(case, ref)
    vtol = tol * max(1.0, 10.0 * sens) if math.isfinite(sens) else math.inf
    rtol_res = tol * 10  # a solver's own per-step residual when it claims convergence
    try:
        rep = autopar.parallelize(case.cell).explain(case.h0, case.xs, length=case.length)
    except Exception as e:  # noqa: BLE001
        if _acceptable(e):
            infos.append(f"explain refused: {type(e).__name__}: {str(e)[:160]}")
            return findings, infos, None
        findings.append(_crash(seed, "auto", "explain", e))
        return findings, infos, None
    solvers = _pick_solvers(rep, seed, mode)
    infos.append(f"plan {rep.solver}/{rep.plan.backward} on {rep.plan.backend}; {rep.structure.kind}; "
                 f"degree {rep.degree}; sens {sens:.3g}")
    results = {}
    for s in solvers:
        try:
            fn = _fn(case, s, None)
            hs, info = fn(case.h0, case.xs, length=case.length, return_info=True)
            hs = jax.block_until_ready(hs)
        except Exception as e:  # noqa: BLE001
            if _acceptable(e):
                infos.append(f"{s}: refused {type(e).__name__}: {str(e)[:160]}")
            else:
                findings.append(_crash(seed, s, "forward", e))
            continue
        used = info.solver
        conv = bool(np.asarray(info.converged))
        err, where = _elementwise_err(hs, ref)
        results[s] = (used, conv)
        if not conv:
            infos.append(f"{s}: reported converged=False (used {used}), err {err:.3g}")
            continue
        res = _self_residual(case, hs)
        if err > vtol:
            cls = "silent-wrong-value"
            if res > rtol_res and float(np.asarray(info.residual)) <= tol * 10:
                cls = "known:per-element-convergence"
            findings.append(Finding(seed, "values", cls, f"{s}->{used}",
                                    f"err {err:.3g} > tol {vtol:.3g} (sens {sens:.3g}); self-residual {res:.3g}; "
                                    f"info.residual {float(np.asarray(info.residual)):.3g}; {where}"))
        elif res > rtol_res and used != "sequential":
            findings.append(Finding(seed, "residual", "known:per-element-convergence", f"{s}->{used}",
                                    f"converged=True but per-element self-residual {res:.3g} > {rtol_res:.3g} "
                                    f"(info.residual {float(np.asarray(info.residual)):.3g})"))
    return findings, infos, (rep, solvers, results, (sens, sens_scaled))


def check_grads(case, rep, results, sens, backend="gpu", mode="sample"):
    """``sens``: ``_sensitivity``'s pair (against 1 + |h|, and on the states' own scale)."""
    findings, infos = [], []
    seed = case.seed
    if not _float_leaves(case.h0) or rep is None:
        return findings, infos
    sens, sens_scaled = sens
    if not (math.isfinite(sens) and sens < 1e3):
        infos.append(f"grads skipped: sensitivity {sens:.3g}")
        return findings, infos
    if not (math.isfinite(sens_scaled) and sens_scaled < 1e3):
        infos.append(f"grads skipped: sensitivity {sens_scaled:.3g} on the states' own scale")
        return findings, infos
    w = _loss_weights(case, seed)
    try:
        ref = _grads(case, lambda h, x: scan_states(case.cell, h, x, length=case.length), w)
    except Exception as e:  # noqa: BLE001
        infos.append(f"oracle grad failed: {type(e).__name__}: {str(e)[:120]}")
        return findings, infos
    tol = max(_tol(case), 1e-3) * max(1.0, 10 * sens)
    ref_leaves = jax.tree_util.tree_leaves(ref)
    normwise = 1e4 * max((float(np.finfo(np.asarray(l).dtype).eps) for l in ref_leaves), default=0.0)
    applies = [c.solver for c in rep.candidates if c.applies]
    alt = [s for s in applies if s not in ("sequential", rep.solver)]
    combos = [("auto", None), (rep.solver, "linear"), (rep.solver, "sequential")]
    if alt:
        combos.append((alt[seed % len(alt)], None))
    if mode != "all":  # one forced backward and one other forward solver, rotating with the seed
        combos = [combos[0], combos[1 + seed % 2]]
    for s, b in combos:
        if s in results and not results[s][1]:
            continue  # the forward said it did not converge
        tag = f"{s}/bwd={b or 'auto'}"

        def run(h, x, fn=_fn(case, s, b)):
            return fn(h, x, length=case.length)

        try:
            got = _grads(case, run, w)
        except Exception as e:  # noqa: BLE001
            if _acceptable(e):
                infos.append(f"grad {tag}: refused {type(e).__name__}: {str(e)[:160]}")
            else:
                f = _crash(seed, tag, "grad", e)
                findings.append(f)
            continue
        err, where = _elementwise_err(got, ref, normwise=normwise)
        if err > tol:
            findings.append(Finding(seed, "grad", "wrong-grad", tag, f"err {err:.3g} > tol {tol:.3g}; {where}"))
    return findings, infos


def _step_jac(rec):
    consts = rec.consts
    cplx = np.issubdtype(np.dtype(rec.layout.vec_dtype), np.complexfloating)

    def make(mode):
        def j(v, disc, xl):
            f = lambda u: rec.step(consts, u, disc, xl)[0]  # noqa: E731
            return mode(f, holomorphic=cplx)(v)

        return jax.jit(j)

    fwd, rev = make(jax.jacfwd), make(jax.jacrev)

    def jac(v, disc, xl):
        try:
            return np.asarray(fwd(v, disc, xl))
        except TypeError:  # custom_vjp inside: reverse mode only
            return np.asarray(rev(v, disc, xl))

    jac.rev = lambda v, disc, xl: np.asarray(rev(v, disc, xl))
    return jac


def check_analysis(case):
    findings, infos = [], []
    seed = case.seed
    try:
        rec, facts = analyse_cell(case.cell, case.h0, case.xs if case.xs is not None else None) \
            if case.xs is not None else _analyse_len(case)
    except Exception as e:  # noqa: BLE001
        if not _acceptable(e):
            findings.append(_crash(seed, "-", "analyse", e))
        return findings, infos
    if rec.size == 0:
        return findings, infos
    rng = np.random.default_rng(seed + 11)
    jac = _step_jac(rec)
    points = []
    for scale in (1.0, 30.0):
        points.append((f"random x{scale:g}", random_inputs(rec, rng, scale)))
    v, disc, xl = random_inputs(rec, rng)
    points.append(("zero state", (jnp.zeros_like(v), disc, xl)))
    if np.dtype(rec.layout.vec_dtype) not in (np.float16, jnp.bfloat16):
        points.append(("state x1e6", (v * 1e6, disc, xl)))
    for label, (v, disc, xl) in points:
        try:
            J = jac(v, disc, xl)
        except Exception as e:  # noqa: BLE001
            infos.append(f"jacobian at {label} failed: {type(e).__name__}: {str(e)[:100]}")
            continue
        for check, msg in jacobian_violations(facts, J):
            findings.append(Finding(seed, check, f"unsound-{check}", "-", f"at {label}: {msg}"))
        if not per_step_adjoint(facts):
            # The linear adjoint reads J by forward mode; lax.scan's gradient is reverse mode.
            # Unless the analysis sent the backward per step, the two must agree.
            try:
                Jr = jac.rev(v, disc, xl)
            except Exception as e:  # noqa: BLE001 - a cell JAX cannot reverse-differentiate (while_loop)
                infos.append(f"jacrev at {label} failed: {type(e).__name__}: {str(e)[:100]}")
                continue
            bad = _ad_disagreement(J, Jr, rec.layout.vec_dtype)
            if bad is not None:
                twin = _float64_twin_ad(case, v, disc, xl)
                if twin is None:  # the float64 twin agrees: float32 rounding, amplified by mixed scales
                    infos.append(f"jacfwd/jacrev differ at {label} {bad[0]} ({bad[1]:.6g} vs {bad[2]:.6g}) "
                                 "in float32 only; the float64 twin agrees (rounding)")
                    continue
                i, a, b = bad
                findings.append(Finding(seed, "ad", "unsound-ad", "-",
                                        f"at {label}: jacfwd {a:.6g} != jacrev {b:.6g} at {i}{twin}, "
                                        "but the adjoint was not sent per step"))
    if facts.get("linear"):
        msg = _affinity_violation(rec, rng)
        if msg:
            findings.append(Finding(seed, "affine", "unsound-affine", "-", msg))
    return findings, infos


def _ad_disagreement(J, Jr, dtype):
    """(index, jacfwd, jacrev) of the worst entry where forward and reverse mode disagree beyond
    rounding of ``dtype``, or None."""
    eps = float(jnp.finfo(dtype).eps)
    bound = max(1e-4, 50 * eps) * (1 + np.abs(J) + np.abs(Jr))
    if J.shape != Jr.shape or not (np.abs(J - Jr) > bound).any():
        return None
    i = np.unravel_index(int(np.argmax(np.abs(J - Jr) - bound)), J.shape)
    return i, J[i], Jr[i]


def _float64_twin_ad(case, v, disc, xl):
    """For a float32/complex64 case whose jacfwd and jacrev disagree: the same case built in
    float64, differentiated both ways at the same point. None when the twin agrees (the float32
    disagreement is rounding: with states scaled 1e-3 … 1e6 an entry J_ij = (s_i/s_j)·d_ij carries
    float32 noise amplified by s_i/s_j); else a note of the twin's disagreement (or why there is none)."""
    if "float64" in case.desc.split(";")[0]:  # already the twin
        return " (a float64 case)"
    try:
        twin = make_case(case.seed, case.max_T, dtype=jnp.float64)
        from autopar.trace import trace_cell

        rec = trace_cell(twin.cell, twin.h0, twin.xs, twin.length)
        up = lambda a: jnp.asarray(a, jnp.promote_types(jnp.asarray(a).dtype, jnp.float64)) \
            if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact) else a  # noqa: E731
        v64, xl64 = up(v), jax.tree_util.tree_map(up, xl)
        jac = _step_jac(rec)
        bad = _ad_disagreement(jac(v64, disc, xl64), jac.rev(v64, disc, xl64), rec.layout.vec_dtype)
    except Exception as e:  # noqa: BLE001 - no twin: keep the finding
        return f" (no float64 twin: {type(e).__name__}: {str(e)[:80]})"
    if bad is None:
        return None
    return f" (float64 twin too: {bad[1]:.6g} vs {bad[2]:.6g} at {bad[0]})"


def _analyse_len(case):
    from autopar.passes import analyse
    from autopar.trace import trace_cell

    rec = trace_cell(case.cell, case.h0, None, case.length)
    return rec, analyse(rec)


def _affinity_violation(rec, rng) -> str | None:
    """For fixed x: f(v) = f(0) + J v with one J, at several v (random, large, saturated)."""
    consts = rec.consts
    dt = rec.layout.vec_dtype
    tol = 1e-9 if np.dtype(dt) in (np.float64, np.complex128) else 1e-4
    step = jax.jit(lambda u, disc, xl: rec.step(consts, u, disc, xl)[0])
    jac = _step_jac(rec)
    for _ in range(2):
        _, disc, xl = random_inputs(rec, rng)
        f = functools.partial(lambda u, disc, xl: step(u, disc, xl), disc=disc, xl=xl)
        z = jnp.zeros(rec.size, dt)
        f0 = np.asarray(f(z), np.complex128)
        J0 = jac(z, disc, xl).astype(np.complex128)
        for scale in (0.37, 1.0, 30.0, 1e3):
            v = random_inputs(rec, rng, scale)[0]
            fv = np.asarray(f(v), np.complex128)
            lin = f0 + J0 @ np.asarray(v, np.complex128)
            bound = tol * (1 + np.abs(fv) + np.abs(f0) + np.abs(J0) @ np.abs(np.asarray(v, np.complex128)))
            bad = np.abs(fv - lin) > bound
            if bad.any():
                i = int(np.argmax(bad))
                return (f"reported affine, but at |v|~{scale:g}: f(v)[{i}]={fv[i]:.6g} vs f(0)+J(0)v={lin[i]:.6g}")
    return None


ROUNDING = ("reduce_precision", "bf16", "f16", "round", "floor", "int-cast", "ste")


def _reclassify(case, findings):
    """A rounding op proven affine makes the linear solver wrong: one known class for both symptoms."""
    custom = [k for k, tag in (("custom-jvp-in-cell", "ste"), ("custom-jvp-in-cell", "cjvp"),
                               ("custom-vjp-in-cell", "cvjp")) if tag in case.desc]
    if custom:  # a custom rule's derivative is not the primal's: the analysis reads the primal
        for f in findings:
            if f.cls in ("unsound-sparsity", "unsound-structure") or f.cls.startswith("new:crash"):
                f.cls = f"known:{custom[0]}?" if f.cls.startswith("new:crash") else f"known:{custom[0]}"
    rounding = any(r in case.desc for r in ROUNDING)
    if rounding and any(f.cls == "unsound-affine" for f in findings):
        for f in findings:
            if f.cls == "unsound-affine" or (f.check == "values" and f.solver.endswith("linear")):
                f.cls = "known:rounding-called-affine"


def check_case(case: Case, backend: str = "gpu", grads: bool = True, mode: str = "sample"
               ) -> tuple[list[Finding], list[str]]:
    """All checks of one case with the planner on ``backend``'s constants: (findings, notes).
    ``mode="all"`` runs every applicable solver and backward; ``"sample"`` a seed-rotated subset."""
    findings, infos = [], []
    filtering = jax.config.jax_traceback_filtering
    jax.config.update("jax_traceback_filtering", "off")  # so a JAX-internal raise is seen as one
    try:
        with config.override(planner_backend=backend):
            _check_all(case, backend, grads, mode, findings, infos)
    finally:
        jax.config.update("jax_traceback_filtering", filtering)
    return findings, infos


def _check_all(case, backend, grads, mode, findings, infos):
    import time

    t0 = time.perf_counter()
    strict = case.seed % 5 == 0  # a user running with jax_numpy_rank_promotion='raise'
    if strict:
        try:
            with jax.numpy_rank_promotion("raise"):
                _oracle(case)
        except Exception:  # noqa: BLE001 - the cell itself promotes ranks: not this check's business
            strict = False
    if strict:
        infos.append("values checked under jax.numpy_rank_promotion('raise')")
        with jax.numpy_rank_promotion("raise"):
            f, i, state = check_values(case, backend, mode)
    else:
        f, i, state = check_values(case, backend, mode)
    findings += f
    infos += i
    t1 = time.perf_counter()
    if grads and state is not None:
        rep, _, results, sens = state
        f, i = check_grads(case, rep, results, sens, backend, mode)
        findings += f
        infos += i
    t2 = time.perf_counter()
    f, i = check_analysis(case)
    findings += f
    infos += i
    _reclassify(case, findings)
    infos.append(f"time: values {t1 - t0:.1f}s, grads {t2 - t1:.1f}s, analysis {time.perf_counter() - t2:.1f}s")


def reproducer(seed: int, backend: str = "gpu") -> str:
    return (f"PYTHONPATH=. python -c \"import jax; jax.config.update('jax_enable_x64', True); "
            f"from tests.fuzz_cells import *; c=make_case({seed}); print(c.desc); "
            f"print(*check_case(c, '{backend}'), sep='\\n')\"")


@functools.lru_cache(maxsize=None)
def describe(seed: int) -> str:
    return make_case(seed).desc
