"""The claims study (the paper's claims in the paper's regime, with intervals and paired tests): the driver is
`mbt.avdigits.claims`.

    python benchmarks/claims_study.py --out docs/results/claims   # = python -m mbt.avdigits.claims ...
"""

from mbt.avdigits.claims import main

if __name__ == "__main__":
    raise SystemExit(main())
