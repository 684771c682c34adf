"""What a deployed classifier comes with beyond its probabilities: explanations a clinician can
check on the ECG (``fairseq-ecg-predict --explain``, :mod:`.explain`) and one file an engineer can
run without fairseq (``fairseq-ecg-export``, :mod:`.export`)."""
