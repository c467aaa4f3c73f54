"""The bottom of every layer: volume files with their geometry (``volume``), the
``UNLABELLED`` label value, and atomic file writes (``atomic``)."""
