"""Database adapters for durably, each registered through the `durably.dialects` hook."""
