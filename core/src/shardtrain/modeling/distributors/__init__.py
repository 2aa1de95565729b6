"""Distributed trainers on Ray: xgboost, lightgbm, pytorch."""
