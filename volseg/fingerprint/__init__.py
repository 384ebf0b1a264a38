"""Dataset fingerprint: what is measured on the data before any decision is made."""

from volseg.fingerprint.dataset import compute_fingerprint, load_fingerprint, write_fingerprint

__all__ = ["compute_fingerprint", "load_fingerprint", "write_fingerprint"]
