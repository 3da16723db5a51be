"""Analysis passes: what autopar proves about a recurrence before choosing a solver.

Imported as ``autopar.passes``. A pass reads a ``Recurrence`` and adds facts (see
``Facts``); ``register`` adds a user pass to the default pipeline and ``register_rule``
teaches the lattice interpreters a custom primitive.

Default pipeline (in dependency order): sparsity, linearity, coefficients, holomorphy,
structure, colouring, symbolic, cost.
"""

from .base import Facts as Facts
from .base import Pass as Pass
from .base import PassError as PassError
from .base import PassManager as PassManager
from .base import register as register
from .base import registered_passes as registered_passes
from .base import unregister as unregister
from .coefficients import CoefficientPass as CoefficientPass
from .cost import CostPass as CostPass
from .discrete import DiscretePass as DiscretePass
from .linearity import LinearityPass as LinearityPass
from .rules import register_rule as register_rule
from .rules import registered_rules as registered_rules
from .rules import unregister_rule as unregister_rule
from .sparsity import SparsityPass as SparsityPass
from .sparsity import const_fingerprint as _const_fingerprint
from .structure import ColouringPass as ColouringPass
from .structure import HolomorphyPass as HolomorphyPass
from .structure import StructurePass as StructurePass
from .symbolic import SymbolicPass as SymbolicPass

for _p in (SparsityPass, LinearityPass, CoefficientPass, HolomorphyPass, StructurePass, ColouringPass, SymbolicPass,
           CostPass, DiscretePass):
    register(_p)
del _p
from .matrix_state import MatrixStatePass as MatrixStatePass  # noqa: E402

register(MatrixStatePass)


def analyse(rec) -> Facts:
    """Run the default pipeline on ``rec`` and return its facts."""
    return PassManager.default().run(rec)


def facts_valid_for(facts, rec) -> bool:
    """Whether cached ``facts`` still hold for ``rec``: the analysis folds the values of integer
    constants (index arrays); if a re-trace closed over different values, re-analyse."""
    fp = facts.get("const_fingerprint", ())
    return _const_fingerprint(rec, [i for i, *_ in fp]) == tuple(fp)
