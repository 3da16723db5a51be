"""Solvers: each computes the trajectory of a recurrence; see ``base.Solver``."""

from . import pricing as pricing
from . import linear as linear
from . import sequential as sequential
from .base import SOLVER_NAMES as SOLVER_NAMES
from .base import NewtonSolver as NewtonSolver
from .base import Prediction as Prediction
from .base import Problem as Problem
from .base import Solver as Solver
from .base import Stats as Stats
from .base import get_solver as get_solver
from .base import register_solver as register_solver
from .base import solver_names as solver_names
from .base import solver_options as solver_options
from . import deer as deer  # noqa: E402  (registers deer, quasi-deer)
from . import elk as elk  # noqa: E402  (registers elk, quasi-elk)
