"""Data formats: chat JSONL, EM question YAML, safe pools, benign tasks."""
