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
from .api import explain as explain
from .api import parallelize as parallelize
from .api import scan as scan
from .emit import Info as Info
from .errors import AutoparError as AutoparError
from .errors import FallbackWarning as FallbackWarning
from .report import Report as Report
from .solvers import SOLVER_NAMES as SOLVER_NAMES
from .solvers.result import Result as Result

from . import calibrate as calibrate  # noqa: E402  (the module; callable, see below)

__version__ = "0.1.0"


class _CallableModule(type(costs)):
    """``autopar.calibrate`` is the module ``autopar.calibrate`` *and* callable as its function
    ``autopar.calibrate.calibrate``: ``autopar.calibrate()`` measures, and the documented path
    ``autopar.calibrate.calibrate`` (with ``scan_program`` and the other helpers) resolves."""

    def __call__(self, *args, **kwargs):
        return self.calibrate(*args, **kwargs)


calibrate.__class__ = _CallableModule
