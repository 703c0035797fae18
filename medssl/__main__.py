"""``python -m medssl`` behaves exactly like the ``medssl`` console script."""

from medssl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
