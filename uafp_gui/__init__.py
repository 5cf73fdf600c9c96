"""uafp_gui: uncertainty-aware Fourier ptychographic microscopy on low-cost LED-array hardware."""

import os

# torch's OpenMP worker threads spin while waiting by default. On a 2-core machine that also runs the
# GUI, acquisition or anything else, spinning threads starve each other (measured: 7.7 s instead of
# 2.2 s per UA-FP iteration with one busy process beside it); sleeping waits cost ~10 % when idle.
# Set before torch loads its OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
