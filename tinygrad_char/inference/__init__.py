"""Generating text from a trained model: sampling with a KV cache, and the HTTP server."""
