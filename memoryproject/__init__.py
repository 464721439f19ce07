"""The Django project: settings, URLs, the embedded development stack, health."""

from __future__ import annotations

import os

# One BLAS thread per process, set before anything imports numpy. The
# embedding model no longer uses BLAS (ONNX Runtime has its own threads:
# EMBEDDING_THREADS), but numpy's matrix products still do (a batch's
# near-duplicate check), and with OpenBLAS's default of a thread per core two
# processes doing them at once on 2 cores took 40x longer than one thread each
# (measured on the numpy embedding pass: 336 against 8 ms a text). Set the
# variables to override.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
