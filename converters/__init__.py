"""edgeface.converters"""
