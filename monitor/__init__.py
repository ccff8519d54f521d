"""Anomaly monitor for industrial inspection lines."""

import os

# OpenCV reads this once, at its first image decode: a decompression bomb is refused (cv2.error)
# long before it can exhaust memory. 2**26 pixels is an 8k x 8k image, far above any line camera.
os.environ.setdefault("CV_IO_MAX_IMAGE_PIXELS", str(2**26))
# TensorFlow's C++ start-up chatter is not one-line-per-event logging; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A camera that is down makes OpenCV and FFmpeg print unstructured lines on every reconnect attempt; the
# camera source logs one structured line instead. OpenCV reads its variable only before cv2 is imported.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

__version__ = "0.1.0"
