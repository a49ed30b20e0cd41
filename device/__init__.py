"""edgeface.device"""
