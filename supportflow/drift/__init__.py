"""Drift: the monitor's figures over the turn log, its MLflow report, and the event that triggers retraining."""
