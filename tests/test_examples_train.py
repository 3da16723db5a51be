"""The training example runs and its loss curve matches lax.scan's step for step."""

import importlib.util
import pathlib

import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_diag_gru.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_diag_gru", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backward", ["linear"])
def test_train_diag_gru_matches_scan(backward, capsys):
    mod = _load()
    la, ls = mod.main(["--steps", "4", "--T", "16", "--batch", "4", "--hidden", "8", "--backward", backward, "--lr", "0.05"])
    assert len(la) == 4 and np.all(np.isfinite(la))
    np.testing.assert_allclose(la, ls, rtol=1e-4)
    assert "loss curves match" in capsys.readouterr().out
