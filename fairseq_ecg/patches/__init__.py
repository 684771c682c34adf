"""What importing the plugin changes in fairseq's own programs: checkpoint copies that survive a
kill and a one-line error for a corrupt or unsafe checkpoint (``resume``), the settings saved
beside the checkpoints and checked on resume (``run_settings``), and quiet output with a one-line
Ctrl-C (``console``). Imported by ``fairseq_ecg/__init__.py``."""
