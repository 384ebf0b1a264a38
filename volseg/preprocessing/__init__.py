"""Cropping, resampling and normalization of cases into the on-disk training format."""
