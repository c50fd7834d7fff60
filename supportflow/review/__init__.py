"""What people teach the bot after it served: the review queue agents label, and the knowledge-gap report writers read."""
