"""edgeface: face recognition for the edge (int8 TFLite, Raspberry Pi, Coral)."""
__version__ = "0.1.0"
