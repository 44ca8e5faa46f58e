"""A model as the module serves it: loaded with its manifest (loaded.py), and how windows of
streamed samples feed it (streamplan.py)."""
