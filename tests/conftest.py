import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `from tests import zoo` from any working folder
    sys.path.insert(0, str(ROOT))
