"""DUEL: Duplicate Elimination on Active Memory, reproduced.

The package backs the book's notebooks: an imbalanced data stream
(:mod:`duel.data`), the active memory and its policies (:mod:`duel.memory`),
the paper's measurements (:mod:`duel.metrics`) and the training methods.
"""

__version__ = "0.1.0"
