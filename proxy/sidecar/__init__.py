"""``ktp sidecar``: options (``config.py``), the runtime wiring the parts (``runtime.py``)."""
