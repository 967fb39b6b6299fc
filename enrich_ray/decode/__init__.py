"""Decoding and preprocessing: DICOM, PNG and JPEG files to size x size float32 frames in [0, 1].

sniff.py tells formats apart, dicom.py reads headers and DICOM pixels, raster.py PNG/JPEG,
preprocess.py crops and resizes, stage.py is the Arrow-in, Arrow-out decode stage, causes.py names why a
file gave no image (the error rows' error_type).
"""
