import sys

from modelsim.server import main

sys.exit(main())
