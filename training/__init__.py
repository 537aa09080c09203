"""Training the registered models: deterministic CPU runs on synthetic scenes or a labelled folder
(``python -m training``), saving state dicts the build loads."""
