"""Models nobody on the project wrote: fetched from published packages at test time."""
