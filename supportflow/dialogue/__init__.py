"""The dialogue layer: a Rasa 3.6 project generated from the intent catalogue and the knowledge base.

Rasa runs in its own Python 3.10 environment; this package only writes its project files and drives
its command line and HTTP API. The files in `rasa_files/` run inside Rasa, not here.
"""
