"""Shared pytest configuration."""


def pytest_configure(config):
    config.addinivalue_line("markers", "tensorrt: needs TensorRT and an NVIDIA GPU")
