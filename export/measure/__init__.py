"""Measurement: engines against PyTorch. Agreement metrics and mIoU (``metrics``), ``python -m export check``
(``check``: parity and speed of every engine), ``--data`` accuracy (``evaluate``), latency and memory
(``speed``) and the reports (``report``)."""
