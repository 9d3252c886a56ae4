"""Predictors: latency models trained from the store."""
