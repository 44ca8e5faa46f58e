"""The reading pipeline: decode -> batch -> run -> split -> encode -> publish."""
