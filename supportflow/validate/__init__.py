"""Validate: the lake's tickets against the data contracts (Great Expectations), quarantine, and the training snapshot."""
