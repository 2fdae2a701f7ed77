"""bids_phydiff: a BIDS App that synthesises diffusion MRI with the Phy-Diff model."""

__version__ = "0.1.0"
__all__ = ["__version__"]
