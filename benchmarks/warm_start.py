"""Warm starts in a training loop: Newton iterations per step, cold (zeros) vs warm
(``fn(h0, xs, init=hs_prev)`` with the previous step's solution of the same batch).

The loop is examples/train_diag_gru.py's (Adam, delayed-copy task, input projections outside the
recurrence), full-batch so that "the last step's solution" is a solution of the same sequences
under the previous parameters. Two cells: the ParaRNN-style diagonal GRU of the example and a
dense GRU (recurrent matrices). Both runs start from the same parameters and see the same data;
the loss columns show they train identically (warm starts change iterations, not values).

    PYTHONPATH=. python3 benchmarks/warm_start.py [--steps 40] [--T 256] [--hidden 16] [--solver deer]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import autopar  # noqa: E402
from benchmarks.common import machine_description  # noqa: E402
from examples.train_diag_gru import adam, gru_cell, init_params, make_data  # noqa: E402


def dense_params(key, n_in, hidden, n_out):
    p = init_params(key, n_in, hidden, n_out)
    k = jax.random.split(jax.random.PRNGKey(7), 3)
    p["R"] = jax.random.normal(k[0], (3, hidden, hidden)) / np.sqrt(hidden)  # z, r, candidate
    return p


def dense_gru_cell(p, h, u):
    z = jax.nn.sigmoid(u[0] + p["R"][0] @ h)
    r = jax.nn.sigmoid(u[1] + p["R"][1] @ h)
    cand = jnp.tanh(u[2] + p["R"][2] @ (r * h))
    return (1.0 - z) * h + z * cand


def make_step(cell_fn, solver, warm, opt_update):
    def one(p, xs, init):
        us = jnp.einsum("ghi,ti->tgh", p["W"], xs) + p["b"][None]
        h0 = jnp.zeros(p["a"].shape, xs.dtype)
        fn = autopar.parallelize(functools.partial(cell_fn, p), solver=solver)
        hs, info = fn(h0, us, init=init if warm else None, return_info=True)
        return hs @ p["V"].T + p["c"][None], hs, info.iterations

    def loss_fn(p, xs, ys, init):
        pred, hs, its = jax.vmap(one, in_axes=(None, 0, 0))(p, xs, init)
        return jnp.mean((pred - ys) ** 2), (hs, its)

    @jax.jit
    def step(p, s, xs, ys, init):
        (loss, (hs, its)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, xs, ys, init)
        p, s = opt_update(g, s, p)
        return p, s, loss, jax.lax.stop_gradient(hs), its

    return step


def run(cell_fn, params, data, steps, solver, warm, lr):
    opt_init, opt_update = adam(lr)
    step = make_step(cell_fn, solver, warm, opt_update)
    xs, ys = data
    s = opt_init(params)
    hs = jnp.zeros(xs.shape[:2] + params["a"].shape, xs.dtype)
    its, losses, wall = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, s, loss, hs, it = jax.block_until_ready(step(params, s, xs, ys, hs))
        wall.append(time.perf_counter() - t0)
        its.append(np.asarray(it))
        losses.append(float(loss))
    return np.stack(its), np.asarray(losses), np.asarray(wall)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--solver", default="deer")
    ap.add_argument("--lr", type=float, default=1e-2)
    args = ap.parse_args(argv)
    print(f"machine: {machine_description()}")
    print(f"command: python benchmarks/warm_start.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    n_in, n_out = 2, 1
    data = make_data(jax.random.PRNGKey(1), args.batch, args.T, n_in)
    for name, cell_fn, make_p in (("diagonal GRU", gru_cell, init_params), ("dense GRU", dense_gru_cell, dense_params)):
        params = make_p(jax.random.PRNGKey(0), n_in, args.hidden, n_out)
        ic, lc, wc = run(cell_fn, params, data, args.steps, args.solver, False, args.lr)
        iw, lw, ww = run(cell_fn, params, data, args.steps, args.solver, True, args.lr)
        print(f"\n{name}, solver={args.solver}, T={args.T}, hidden={args.hidden}, batch={args.batch} "
              "(iterations: mean / max over the batch)")
        print(f"{'step':>5} {'cold its':>10} {'warm its':>10} {'cold loss':>11} {'warm loss':>11}")
        for i in range(args.steps):
            if i < 4 or i % max(1, args.steps // 8) == 0 or i == args.steps - 1:
                print(f"{i:5d} {ic[i].mean():5.2f}/{ic[i].max():<4d} {iw[i].mean():5.2f}/{iw[i].max():<4d} "
                      f"{lc[i]:11.6f} {lw[i]:11.6f}")
        after = slice(2, None)
        print(f"steps 2..{args.steps - 1}: mean iterations cold {ic[after].mean():.2f}, warm {iw[after].mean():.2f} "
              f"(max warm {iw[after].max()}); median step time cold {1e3 * np.median(wc[after]):.1f} ms, "
              f"warm {1e3 * np.median(ww[after]):.1f} ms; max rel loss diff "
              f"{np.max(np.abs(lw - lc) / np.abs(lc)):.1e}")


if __name__ == "__main__":
    main(sys.argv[1:])
