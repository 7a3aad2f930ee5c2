"""The AV-Digits study (fusion type and layer against accuracy and GFLOPs): the driver is `mbt.avdigits.study`.

    python benchmarks/avdigits_study.py --out docs/results/avdigits      # = python -m mbt.avdigits.study ...
"""

from mbt.avdigits.study import main

if __name__ == "__main__":
    raise SystemExit(main())
