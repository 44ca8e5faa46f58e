"""A model's manifest: the document (document.py) and its blocks: postprocess, vision
(preprocess and cascade) and streams (window and state)."""
