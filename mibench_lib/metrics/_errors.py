"""The one error every metric raises when its value cannot be computed."""

from __future__ import annotations


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed on the given inputs; the message says why.

    Raised instead of returning 0 or NaN: too few samples for a k-NN radius or a covariance, a class
    without reference images, non-finite features, a missing weights file. Callers that prefer a
    placeholder (``evaluate_reconstructions(..., strict=False)``) catch exactly this type and record
    the message next to the NaN.
    """
