import sys

from prompt_tuning.sweeps.cli import main

sys.exit(main())
