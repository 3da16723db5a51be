"""The differential fuzzer (tests/fuzz_cells.py) on a fixed, seeded budget.

Each seed is one random small recurrence; every finding (a silent wrong value, a wrong
gradient, an unsound analysis claim, an internal crash) fails the case with its class and a
reproducer. The planner runs on the GPU constants (``$AUTOPAR_PLANNER_BACKEND`` if set, else
``gpu``), so ``auto`` takes the parallel paths a GPU would.

    AUTOPAR_FUZZ=200 pytest tests/test_fuzz.py      # more seeds (a long run; see scripts/fuzz.py)

The quick budget keeps T ≤ 5 and samples the solvers (auto, linear, one Newton solver and one
forced backward per case, rotating with the seed): a Newton program costs seconds to compile
on XLA:CPU, so checking every solver of every case does not fit CI.
"""

import os

import pytest

from autopar import config

from .fuzz_cells import check_case, make_case, reproducer

QUICK_SEEDS = 12
N = int(os.environ.get("AUTOPAR_FUZZ", "0") or 0)
SEEDS = list(range(N)) if N > 0 else list(range(QUICK_SEEDS))
MAX_T = None if N > 0 else 5

#: Seeds of the quick budget that hit a known-open class (strict xfail, so a fix flips them to
#: failures and the mark must go). The classes the first fuzz runs found (ELK under rank promotion
#: 'raise', xs=None through the fallback chain, rounding called affine) are fixed: none open now.
KNOWN_OPEN: dict[int, str] = {}


def _param(seed):
    if N == 0 and seed in KNOWN_OPEN:
        return pytest.param(seed, marks=pytest.mark.xfail(strict=True, reason=KNOWN_OPEN[seed]))
    return seed


#: Seeds of long runs whose findings were fixed (full T, the quick budget's solver sample):
#: 6113, 7036 — wrong gradients of gathers / scatters breaking their in-bounds promise.
REGRESSION_SEEDS = (6113, 7036, 30459)


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
def test_fuzz_regression(seed):
    backend = config.planner_backend() or "gpu"
    findings, _ = check_case(make_case(seed), backend)
    assert not findings, [f"[{f.cls}] {f.check} {f.solver}: {f.detail[:300]}" for f in findings]


@pytest.mark.parametrize("seed", [_param(s) for s in SEEDS])
def test_fuzz_case(seed):
    backend = config.planner_backend() or "gpu"
    case = make_case(seed, max_T=MAX_T)
    findings, _ = check_case(case, backend)
    assert not findings, (
        f"seed {seed} ({case.desc}): {len(findings)} finding(s)\n"
        + "\n".join(f"  [{f.cls}] {f.check} {f.solver}: {f.detail[:500]}" for f in findings)
        + f"\nreproduce: {reproducer(seed, backend)}"
    )


def test_generator_is_deterministic_and_varied():
    a, b = make_case(7), make_case(7)
    assert a.desc == b.desc
    descs = {make_case(s).desc.split(";")[1] for s in range(40)}
    assert len(descs) > 15, descs


def test_float64_twin_is_the_same_case_and_keeps_structural_ad_findings():
    """The unsound-ad check re-asks a float32 disagreement of the case's float64 twin: float32
    rounding amplified by mixed state scales (seed 22520 at -O0: jacfwd -0.00166 vs jacrev
    -0.00193 where the twin agrees) is no finding, a structural one (an out-of-bounds gather's
    clamped JVP vs its dropped transpose, seed 7036) stays one."""
    import jax.numpy as jnp
    import numpy as np

    from autopar.trace import trace_cell

    from .fuzz_cells import _float64_twin_ad
    from .passes_helpers import random_inputs

    for seed in (7036, 22520, 3, 11):
        a, b = make_case(seed), make_case(seed, dtype=jnp.float64)
        assert a.desc.replace("float32", "float64") == b.desc, (a.desc, b.desc)
    case = make_case(7036)
    rec = trace_cell(case.cell, case.h0, case.xs, case.length)
    v, disc, xl = random_inputs(rec, np.random.default_rng(0))
    note = _float64_twin_ad(case, v, disc, xl)
    assert note is not None and "float64 twin too" in note, note
