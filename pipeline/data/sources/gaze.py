"""Gaze geometry: (pitch, yaw) angles and 3-D gaze vectors, and the angular error between two gazes
(the MPIIGaze metric)."""

from __future__ import annotations

import numpy as np


def pitchyaw_from_vector(g: np.ndarray) -> np.ndarray:
    """(n, 3) gaze vectors -> (n, 2) [pitch, yaw] radians: pitch = arcsin(-g_y), yaw = arctan2(-g_x, -g_z)."""
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] != 3:
        raise ValueError(f"expected gaze vectors of shape (n, 3), got {g.shape}")
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    if np.any(norm == 0) or not np.all(np.isfinite(norm)):
        raise ValueError("gaze vectors must be finite and non-zero")
    g = g / norm
    pitch = np.arcsin(np.clip(-g[:, 1], -1.0, 1.0))
    yaw = np.arctan2(-g[:, 0], -g[:, 2])
    return np.stack([pitch, yaw], axis=1)


def vector_from_pitchyaw(py: np.ndarray) -> np.ndarray:
    """(n, 2) [pitch, yaw] radians -> (n, 3) unit vectors; inverse of ``pitchyaw_from_vector``."""
    py = np.asarray(py, dtype=np.float64)
    if py.ndim != 2 or py.shape[1] != 2:
        raise ValueError(f"expected (pitch, yaw) of shape (n, 2), got {py.shape}")
    p, y = py[:, 0], py[:, 1]
    return np.stack([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)], axis=1)


def angular_error_deg(pred_py: np.ndarray, true_py: np.ndarray) -> np.ndarray:
    """(n,) angle in degrees between the 3-D gaze directions of two (n, 2) [pitch, yaw] arrays."""
    a, b = vector_from_pitchyaw(pred_py), vector_from_pitchyaw(true_py)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
