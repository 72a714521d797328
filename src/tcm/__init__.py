"""tcm: threshold-consistent deep metric learning.

Conventions used by every module: embeddings are L2-normalised, pairs are compared by cosine
*similarity* ``s = <x_i, x_j>`` in ``[-1, 1]``, and a pair is accepted (declared a match) when
``s >= threshold``.
"""

__version__ = "0.1.0"
