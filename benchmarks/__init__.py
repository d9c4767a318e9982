"""Cost benchmarks of the DUEL memory and of the methods' training steps.

Run them with ``make bench`` (``python -m benchmarks.run``); results land in
``benchmarks/results/<device-kind>.json`` and the book's cost notebook
(``notebooks/06_cost.ipynb``) renders them beside the paper's Appendix D.
"""
