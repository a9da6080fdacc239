import sys

from prompt_tuning.launch.local import main

sys.exit(main(prog="python -m launch.local"))
