"""Names of the standard spaces (TemplateFlow template identifiers) the app uses by default.

Kept free of heavy imports so that the command line can read them without loading numpy or torch.
"""

DEFAULT_TEMPLATE = "MNI152NLin6Asym"
"""The template prepared data are registered to unless ``--template`` says otherwise: FSL's MNI152."""

XTRACT_TEMPLATE = DEFAULT_TEMPLATE
"""The space of FSL's XTRACT tract atlas (the adapter's tract condition)."""
