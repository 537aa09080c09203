"""Serving: what Triton Inference Server and DeepStream read, written from the built engines' manifests."""
