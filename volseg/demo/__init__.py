"""Small synthetic datasets in the nnU-Net v2 raw layout: ``lung`` (chest CT nodules) and ``ms``
(two-timepoint FLAIR with stable, new and vanishing lesions). See docs/demo-data.md."""

from volseg.demo.lung import generate_lung_dataset
from volseg.demo.ms import generate_ms_dataset

__all__ = ["generate_lung_dataset", "generate_ms_dataset"]
