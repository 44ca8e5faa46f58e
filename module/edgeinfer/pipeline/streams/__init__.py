"""Streams: samples of one stream gathered into windows, with its state, journalled."""
