"""Apipod Smart Proxy: an OpenAI-compatible gateway built as a mitmproxy addon."""

__version__ = "0.1.0"
