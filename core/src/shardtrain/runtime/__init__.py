"""What the distributors share: Ray connection, worker groups, the per-worker context."""
