"""uafp_gui: uncertainty-aware Fourier ptychographic microscopy on low-cost LED-array hardware."""

__version__ = "0.1.0"
