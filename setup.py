"""fairseq_ecg: lead-agnostic self-supervised ECG learning as a plugin for stock fairseq."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class build_py_with_examples(build_py):
    """Copy the top-level examples/ (the YAMLs fairseq-ecg-experiments runs) into the built package as
    fairseq_ecg/examples/, which an installed wheel reads. The repository keeps the one copy at the top,
    for ``fairseq-hydra-train --config-dir examples/...``; an editable install reads that copy in place."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib, "fairseq_ecg", "examples")
            shutil.rmtree(target, ignore_errors=True)  # no YAML left over from an earlier build/
            self.copy_tree("examples", str(target))


setup(
    name="fairseq_ecg",
    version="0.1.0",
    description="wav2vec 2.0 + CMSC + random lead masking for ECGs, as a fairseq user-dir plugin",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    # Python 3.11 and newer only: the plugin seeds fairseq's compute_mask_indices (seed, epoch,
    # indices), which fairseq 0.12.2 (the only fairseq that imports on Python 3.10) lacks.
    python_requires=">=3.11",
    packages=find_packages(include=["fairseq_ecg", "fairseq_ecg.*"]),
    package_data={"fairseq_ecg": ["tables/*.csv", "tables/LICENSE.txt"]},
    cmdclass={"build_py": build_py_with_examples},  # examples/ ships as fairseq_ecg/examples/ (MANIFEST.in: in the sdist)
    install_requires=[
        # fairseq 0.12.2 cannot be imported on Python >= 3.11; the fork with the dataclass fix can.
        # Never both in one environment: they install the same `fairseq` package.
        "fairseq-fixed==0.12.3.1",
        "torch>=1.13",
        "numpy",
        "scipy",
        "soundfile",
        "wfdb",
        # CODE-15% HDF5 files (read without loading a whole file) and DICOM waveform exports.
        "h5py",
        "pydicom",
        "scikit-learn",
        "matplotlib",
        # integrated gradients for fairseq-ecg-predict --explain (pure Python, on torch)
        "captum",
    ],
    # hub: fairseq-ecg-import hf://OWNER/REPO/PATH (ECG-FM's weights from the Hugging Face hub)
    # export: fairseq-ecg-export --format onnx (the exporter's metadata and its check run on onnxruntime)
    extras_require={"test": ["pytest", "hypothesis", "huggingface_hub", "onnx", "onnxruntime"],
                    "hub": ["huggingface_hub"], "export": ["onnx", "onnxruntime"]},
    entry_points={
        "console_scripts": [
            "fairseq-ecg-synth=fairseq_ecg.synth:main",
            "fairseq-ecg-manifest=fairseq_ecg.preparation:main",
            "fairseq-ecg-embed=fairseq_ecg.embed:main",
            "fairseq-ecg-import=fairseq_ecg.importer:main",
            "fairseq-ecg-predict=fairseq_ecg.predict:main",
            "fairseq-ecg-experiments=fairseq_ecg.experiments:main",
            "fairseq-ecg-demo=fairseq_ecg.demo:main",
            "fairseq-ecg-export=fairseq_ecg.deploy.export:main",
            "fairseq-ecg-userdir=fairseq_ecg:print_user_dir",
        ]
    },
)
