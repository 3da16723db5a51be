"""Test configuration: float64 available everywhere (tests state dtypes explicitly), rank promotion
'raise', a bounded hypothesis profile, and shared oracles."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

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
