"""Configuration: `typed` turns plain dicts and YAML into checked dataclasses (any layer may
import it); `run` gathers every stage's config into the one `RunConfig` of a run.

This package file imports nothing, so the low layers can use `tunegguf.config.typed`
without pulling in the stage packages that `tunegguf.config.run` composes.
"""
