"""Draw the sparsity pictures of docs/structures.md into docs/img/ (needs matplotlib).

    python scripts/gen_doc_images.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import autopar  # noqa: E402
from benchmarks.cells import CELLS  # noqa: E402


def examples():
    f32 = jnp.float32
    th = jnp.linspace(0.1, 1.0, 4, dtype=f32)

    def rotation(h, x):  # 2×2 blocks pairing a_i with b_i
        a, b = h
        c, s = jnp.cos(th), jnp.sin(th)
        return jnp.tanh(c * a - s * b + x), jnp.tanh(s * a + c * b - x)

    out = [("h ← sin(x)", lambda h, x: jnp.sin(x), jnp.zeros(8, f32), jnp.ones((4, 8), f32)),
           ("GRU, diagonal weights", *CELLS["diag-gru"](8)[:2], jnp.ones((4, 8), f32)),
           ("rotations", rotation, (jnp.zeros(4, f32), jnp.zeros(4, f32)), jnp.ones((4, 4), f32))]
    cell, S0, xf, _ = CELLS["deltanet"](9)
    out.append(("DeltaNet, 3×3 state", cell, S0, xf(4)))
    cell, h0, xf, _ = CELLS["lstm"](4)
    out.append(("LSTM, state (c, h)", cell, h0, xf(4)))
    cell, h0, xf, _ = CELLS["dense-gru"](8)
    out.append(("GRU", cell, h0, xf(4)))
    return out


def main():
    ex = examples()
    # two rows of three, so the titles stay legible when the page scales the figure to its width
    cols = 3
    rows = -(-len(ex) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows))
    axes = axes.ravel()
    for ax in axes[len(ex):]:
        ax.axis("off")
    for ax, (title, cell, h0, xs) in zip(axes, ex):
        rep = autopar.parallelize(cell).explain(h0, xs)
        rep.plot(ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_title(f"{title}\n→ {rep.structure.kind}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(h_pad=2.0)
    out = ROOT / "docs" / "img" / "structures.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
