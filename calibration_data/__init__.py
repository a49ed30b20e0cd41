"""edgeface.calibration_data"""
