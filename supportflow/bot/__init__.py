"""The runtime bot's building blocks: the turn log, the handoff queue, the LLM and the channels."""
