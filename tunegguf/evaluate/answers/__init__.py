"""Parity of free-text answers (instruction and chat rows): teacher-forced KL on the
reference answer, greedy answers compared with HF's and with the reference.

`run.evaluate_answers` is the entry point; `metrics` holds the pure statistics."""
