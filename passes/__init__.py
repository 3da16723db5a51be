"""Analysis passes: what autopar proves about a recurrence before choosing a solver.

Imported as ``autopar.passes``. A pass reads a ``Recurrence`` and adds facts (see
``Facts``); ``register`` adds a user pass to the default pipeline.
"""

from .base import Facts as Facts
from .base import Pass as Pass
from .base import PassError as PassError
from .base import PassManager as PassManager
from .base import register as register
from .base import registered_passes as registered_passes
from .base import unregister as unregister
from .cost import CostPass as CostPass
from .linearity import LinearityPass as LinearityPass
from .sparsity import SparsityPass as SparsityPass
from .structure import HolomorphyPass as HolomorphyPass
from .structure import StructurePass as StructurePass

for _p in (SparsityPass, LinearityPass, HolomorphyPass, StructurePass, CostPass):
    register(_p)
del _p
from .matrix_state import MatrixStatePass as MatrixStatePass  # noqa: E402

register(MatrixStatePass)


def analyse(rec) -> Facts:
    """Run the default pipeline on ``rec`` and return its facts."""
    return PassManager.default().run(rec)
