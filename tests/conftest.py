"""Test configuration: float64 available everywhere (tests state dtypes explicitly), rank promotion
'raise', a bounded hypothesis profile, and shared oracles."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# A persistent XLA compilation cache shared by the xdist workers, the subprocess tests and CI's
# second pass (the GPU-planned rerun): many tests compile the same program (cells' closed-over
# arrays are arguments, not constants), and a hit loads it instead of compiling it again.
# Measured: tests/test_forward_mode.py + tests/test_gradients.py, -n 2, a cold cache: 722 -> 586 s.
# Keys include the jax/jaxlib versions and the compile options; AUTOPAR_TEST_COMPILATION_CACHE=0
# turns it off, JAX_COMPILATION_CACHE_DIR moves it.
if os.environ.get("AUTOPAR_TEST_COMPILATION_CACHE", "1") != "0":
    import tempfile

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(tempfile.gettempdir(), f"autopar-test-xla-cache-{getattr(os, 'getuid', lambda: 0)()}"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
# JAX's own test harness (and many users) run with implicit rank promotion forbidden: so does ours,
# so that no solver relies on it. AUTOPAR_TEST_RANK_PROMOTION=allow turns it off for a local run.
jax.config.update("jax_numpy_rank_promotion", os.environ.get("AUTOPAR_TEST_RANK_PROMOTION", "raise"))
if os.environ.get("AUTOPAR_TEST_ENABLE_CHECKS"):
    jax.config.update("jax_enable_checks", True)

import hypothesis  # noqa: E402

hypothesis.settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
)
hypothesis.settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
