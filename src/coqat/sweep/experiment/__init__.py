"""``coqat report --experiment DIR``: an experiment folder's numbers, figures and README.

An experiment folder holds its committed raw records, the results store built from them
(``coqat results import``), ``analysis.yaml`` (:class:`ExperimentSpec`: which runs the analysis
selects, the noise model, the held-out rules, the laws) and a README template. The analysis is
library code (:mod:`coqat.law.analysis` for the numbers; this package selects the runs and
draws the figures); the folder's own files are data, never code that runs.
"""

from coqat.sweep.experiment.run import analyze, report_experiment
from coqat.sweep.experiment.spec import ExperimentSpec, load_experiment

__all__ = ["ExperimentSpec", "analyze", "load_experiment", "report_experiment"]
