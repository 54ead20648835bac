"""Test-session setup shared by every test module."""

import os

# Triton reads TRITON_INTERPRET when it is first imported (torch can import it early), so the
# interpreter that runs our kernels on CPU must be switched on before any test module loads.
os.environ.setdefault("TRITON_INTERPRET", "1")
