"""``python -m fairseq_ecg.synth``: the ``fairseq-ecg-synth`` command."""
import sys

from .archive import main

sys.exit(main())
