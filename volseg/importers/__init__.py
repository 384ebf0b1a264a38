"""Importers of models trained by other tools into volseg model folders.

:func:`import_nnunet` turns a trained nnU-Net v2 trainer folder into a model folder that
``volseg predict`` runs (see docs/formats.md, "Importing a trained nnU-Net v2 model").
"""

from volseg.importers.nnunet import import_nnunet, map_nnunet_model

__all__ = ["import_nnunet", "map_nnunet_model"]
