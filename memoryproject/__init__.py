"""The Django project: settings, URLs, the embedded development stack, health."""

from __future__ import annotations

import os

# One BLAS thread per process, set before anything imports numpy. Every web
# and job worker embeds text; with OpenBLAS's default of a thread per core,
# two processes embedding at once on 2 cores took 336 ms per text instead of
# 8 ms (bench/embedding.py, two copies at once). Alone, one process is faster
# with two threads (5.2 ms), but a server is never alone. Set the variables
# to override.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
