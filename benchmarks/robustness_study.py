"""The robustness benchmark (modality dropout against missing streams): the driver is `mbt.avdigits.robust`.

    python benchmarks/robustness_study.py --out docs/results/robustness   # = python -m mbt.avdigits.robust ...
"""

from mbt.avdigits.robust import main

if __name__ == "__main__":
    raise SystemExit(main())
