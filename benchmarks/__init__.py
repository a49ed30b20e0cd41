"""edgeface.benchmarks"""
