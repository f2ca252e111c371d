"""Merge the adapter, convert to GGUF offline, quantize, verify, write the manifest."""
