"""The whole chain in one command (`tunegguf run`) and classification with any model (`predict`)."""
