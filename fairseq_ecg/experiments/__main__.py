"""``python -m fairseq_ecg.experiments``: the ``fairseq-ecg-experiments`` command."""
import sys

from .runner import main

sys.exit(main())
