import sys
from pathlib import Path

# `python -m pytest models/tests` from the repository root imports `models.workstation`.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
