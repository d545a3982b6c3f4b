"""Golden camera-model numbers from OpenCV (cv2.projectPoints, cv2.undistortPointsIter) for
tests/test_calibration.py. OpenCV is not a dependency of simspine-jax; run this in a venv with
``opencv-python-headless`` and numpy:  python tests/data/opencv/make_golden.py
(written with opencv-python-headless 4.11.0)."""

from pathlib import Path

import cv2
import numpy as np

rng = np.random.default_rng(0)
K = np.array([[1500.0, 0.0, 960.0], [0.0, 1480.0, 540.0], [0.0, 0.0, 1.0]])
dist = np.array([-0.2, 0.05, 0.001, -0.0015, 0.01])  # k1 k2 p1 p2 k3
rvec = np.array([0.3, -0.2, 0.1])
tvec = np.array([0.1, -0.2, 3.0])
X = rng.uniform(-0.6, 0.6, (60, 3))
uv = cv2.projectPoints(X, rvec, tvec, K, dist)[0][:, 0]
crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-15)
xn = cv2.undistortPointsIter(uv[:, None], K, dist, None, None, crit)[:, 0]
np.savez(
    Path(__file__).with_name("golden.npz"),
    K=K,
    dist=dist,
    rvec=rvec,
    tvec=tvec,
    R=cv2.Rodrigues(rvec)[0],
    X=X,
    uv=uv,
    xn=xn,
    opencv_version=cv2.__version__,
)
