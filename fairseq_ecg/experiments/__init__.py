"""The paper's experiments: the resumable matrix of runs (``runner``, the ``fairseq-ecg-experiments``
command), the forkserver that starts them (``launcher``) and the report built from their results
(``report``)."""
from .runner import main  # noqa: F401  (the console script fairseq-ecg-experiments)
