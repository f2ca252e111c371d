"""Datasets: load, clean, balance, split and freeze the rows every stage reads."""
