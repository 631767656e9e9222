"""Evaluation of ELM generations: semantic and behavioural consistency, retrieval, controls (paper §3.2, App. B)."""
