"""Post-processing of predicted label maps: connected-component rules and their choice."""

from volseg.postprocessing.components import apply_rules, keep_largest_component, remove_small_components

__all__ = ["apply_rules", "keep_largest_component", "remove_small_components"]
