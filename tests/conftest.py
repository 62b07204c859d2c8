import os
import sys

# Make `import testing` work from any working directory.
sys.path.insert(0, os.path.dirname(__file__))
