import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py
os.environ.setdefault("OMP_NUM_THREADS", "2")
