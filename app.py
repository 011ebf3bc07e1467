"""The Hugging Face Space entry point: `python app.py` serves the METRIS page (see `metris_hf.app`)."""

from metris_hf.app import main

if __name__ == "__main__":
    raise SystemExit(main())
