"""supportflow: turn a support desk's ticket history into a support bot, and keep it good."""

__version__ = "0.1.0"
