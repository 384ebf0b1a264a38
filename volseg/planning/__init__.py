"""Experiment planning: from a dataset fingerprint to plans.json."""

from volseg.planning.planner import plan_experiment
from volseg.planning.plans import configuration, load_plans, save_plans, validate_plans

__all__ = ["configuration", "load_plans", "plan_experiment", "save_plans", "validate_plans"]
