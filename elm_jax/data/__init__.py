"""Data: entities and their embeddings, tasks and prompts, training targets."""
