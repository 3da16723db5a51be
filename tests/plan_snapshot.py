"""Every number the planner predicts for a dozen varied cells, as text: the snapshot the planner
refactor (issue 12) must reproduce exactly. ``python -m tests.plan_snapshot > out.txt`` prints it;
``tests/test_plan_snapshot.py`` compares it with the committed ``tests/plan_snapshot.txt``."""

from __future__ import annotations

import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autopar import costs, plan as plan_mod, trace  # noqa: E402
from autopar.passes import analyse  # noqa: E402
from benchmarks.cells import make_cell  # noqa: E402


@jax.custom_vjp
def _clip(x):
    return x


_clip.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))


def _extra_cells():
    rng = np.random.default_rng(0)
    D = 8
    a = jnp.linspace(0.5, 0.99, 16, dtype=jnp.float32)
    u = jnp.asarray(rng.standard_normal((4, D)), jnp.float32)
    W = jnp.asarray(rng.standard_normal((D, D)) / np.sqrt(D), jnp.float32)

    def block_lstm(s, x):  # per-unit (c, h): 2×2 blocks after the layout's interleave
        c, h = s
        i, f, o = (jax.nn.sigmoid(u[k] * h + x) for k in range(3))
        c = f * c + i * jnp.tanh(u[3] * h + x)
        return c, o * jnp.tanh(c)

    def counter(s, x):  # an integer leaf beside the float state
        h, n = s
        return 0.9 * h + x, n + 1

    def mixed(s, x):  # real and complex leaves: no parallel solver
        return 0.5 * s[0] + x, 0.5j * s[1] + x

    ones = lambda T, n=D, dt=jnp.float32: jnp.ones((T, n), dt)  # noqa: E731
    return {
        "diag-affine-T65536": ((lambda h, x: a * h + x), jnp.zeros(16, jnp.float32), ones(1 << 16, 16)),
        "tanh-dense": ((lambda h, x: jnp.tanh(h @ W + x)), jnp.zeros(D, jnp.float32), ones(64)),
        "block-lstm": (block_lstm, (jnp.zeros(D, jnp.float32), jnp.zeros(D, jnp.float32)), ones(512)),
        "integer-leaf": (counter, (jnp.zeros(D, jnp.float32), jnp.zeros(D, jnp.int32)), ones(256)),
        "complex-mixed": (mixed, (jnp.zeros(3, jnp.float32), jnp.zeros(3, jnp.complex64)), ones(1024, 3)),
        "custom-vjp": ((lambda h, x: jnp.tanh(W @ _clip(h) + x)), jnp.zeros(D, jnp.float32), ones(128)),
        "float64-dense-T1": ((lambda h, x: jnp.tanh(h @ W.astype(jnp.float64) + x)), jnp.zeros(D),
                             ones(1, D, jnp.float64)),
    }


def cells():
    out = {}
    for name, D, T in (("diag-ssm", 16, 4096), ("lru", 8, 2048), ("diag-gru", 16, 1024),
                       ("dense-gru", 8, 512), ("lstm", 8, 256), ("deltanet", 16, 1024)):
        cell, h0, x_fn, _ = make_cell(name, D)
        out[f"{name}-D{D}-T{T}"] = (cell, h0, x_fn(T))
    out.update(_extra_cells())
    return out


def _num(x: float) -> str:
    return repr(float(x))


def snapshot(reports: bool = False) -> str:
    """The snapshot text; with ``reports``, each plan's rendered ``explain()`` report as well."""
    from autopar.report import Report

    costs.clear_constants()
    lines = []
    for name, (cell, h0, xs) in cells().items():
        rec = trace.trace_cell(cell, h0, xs)
        facts = analyse(rec)
        for backend in ("cpu", "gpu"):
            K = costs.constants_for(backend)
            p = plan_mod.make_plan(rec, facts, backend=backend, options={"memory_budget": 1e12})
            lines.append(f"{name} {backend}: solver={p.solver} backward={p.backward} discrete={p.discrete}")
            lines.append(f"  reason: {p.reason}")
            lines.append(f"  backward reason: {p.backward_reason}")
            for c in p.candidates:
                lines.append(f"  {c.solver}: applies={c.applies} time={_num(c.time)} memory={_num(c.memory)} "
                             f"iterations={_num(c.iterations)} work={_num(c.work)} depth={_num(c.depth)} "
                             f"fits={c.within_budget} chosen={c.chosen} reason={c.reason}")
            for mode in ("linear", "sequential"):
                b = plan_mod.predict_backward(mode, facts, rec, K)
                lines.append(f"  backward {mode}: time={_num(b.time)} memory={_num(b.memory)} "
                             f"work={_num(b.work)} depth={_num(b.depth)}")
            if reports:
                lines += str(Report(name, facts, p, rec.layout, rec.length)).splitlines()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("AUTOPAR_CACHE_DIR", "/nonexistent-autopar-cache")
    import sys

    print(snapshot(reports="--reports" in sys.argv), end="")
