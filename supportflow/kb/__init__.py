"""The knowledge base: articles in, a searchable index out, and answers with a score the bot can trust."""
