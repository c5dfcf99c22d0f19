"""The GPU worker: a separate process that keeps the Z-Image pipeline warm (``python -m gpu``).

Importing this package stays light; torch and diffusers load only inside the worker.
"""
