"""Synthetic 12-lead ECG archives in the on-disk formats of the real ones.

No machine here reaches PhysioNet, so demos and tests need records that look like the real
archives on disk and in the signal: labels a classifier can learn, several records per patient.
The signal is a 3-D heart vector, one Gaussian bump per wave (P, Q, R, S, T, and the extra forces
of bundle branch blocks), projected to I, II, V1-V6 with the Dower coefficients; III, aVR, aVL and
aVF follow exactly from Einthoven and Goldberger. A patient is a seeded draw of wave vectors,
widths, axis, heart rate and morphology classes; each record draws its rhythm, premature beats,
noise and baseline wander. Deterministic for a seed: same arguments, same bytes.

* ``physionet2021``: ``OUT/training/<source>/g<k>/<NAME>.hea`` + ``.mat`` (MATLAB v4, int16 ``val``,
  format ``16+24``, 1000/mV, ``#Dx`` SNOMED CT codes) with the sources at their real rates
  (cpsc_2018 and georgia 500 Hz, st_petersburg_incart 257 Hz, ptb 1000 Hz). The Challenge data
  carry no patient ids, so ``OUT/patients.csv`` (columns ``record,patient``) gives them; the
  manifest tool reads it as its optional labels/patients CSV.
* ``numpy``, ``code15``, ``mimic_iv_ecg``, ``muse_xml``, ``dicom``: see :mod:`fairseq_ecg.synth.layouts`.
* ``ptbxl``: ``OUT/ptbxl_database.csv`` + ``OUT/scp_statements.csv`` (a subset of the real statement
  table, :data:`SCP_STATEMENTS`, with its first seven columns) and WFDB format-16 records in
  ``records500/00000/00001_hr`` (500 Hz) and ``records100/00000/00001_lr`` (100 Hz, decimated),
  10 s each, folds 1-10 assigned by patient, labels as SCP statements
  (mapped back with :data:`fairseq_ecg.labels.PTBXL_SCP_TO_SNOMED`; PTB-XL has no axis statement,
  so left/right axis deviation is written as LAFB/LPFB).

Command line: ``fairseq-ecg-synth OUT --records N --patients P --seed S [--layout ...]``.
"""
from .archive import main, synthesize_archive  # noqa: F401
from .signals import CLASSES, LAYOUTS, assign_patients, make_patient, synthesize_signal  # noqa: F401
