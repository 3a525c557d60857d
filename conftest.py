"""Root wiring. The harness's fixtures and options come from its pytest plugin (entry point
``ota_hil``); the scenarios' steps are wired in features/conftest.py."""

collect_ignore = ["reports", "benchmarks"]
