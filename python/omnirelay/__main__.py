import sys

from omnirelay.cli import main

sys.exit(main())
