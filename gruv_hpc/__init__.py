"""gruv-hpc: the GRUV paper (Nayebi & Vitelli) at cluster scale."""
__version__ = "0.1.0"
