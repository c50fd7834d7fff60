"""Release: bundles (bentos), the smoke test on spare ports, promotion, rollback, and the served stack."""
