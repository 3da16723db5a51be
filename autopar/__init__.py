"""autopar: make user-defined recurrences run in parallel over the sequence length.

    @autopar.parallelize
    def cell(h, x): ...
    hs = cell(h0, xs)                  # == lax.scan's stacked states
    print(cell.explain(h0, xs))        # what was proven, what was chosen, why
    carry, ys = autopar.scan(f, init, xs)
"""

from . import config as config
from . import costs as costs
from . import passes as passes
from . import solvers as solvers
from . import structure as structure
from .api import Parallelized as Parallelized
from .calibrate import calibrate as calibrate
from .api import explain as explain
from .api import parallelize as parallelize
from .api import scan as scan
from .emit import Info as Info
from .errors import AutoparError as AutoparError
from .report import Report as Report
from .solvers import SOLVER_NAMES as SOLVER_NAMES

__version__ = "0.1.0"
