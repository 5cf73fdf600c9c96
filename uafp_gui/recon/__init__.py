"""recon layer."""
