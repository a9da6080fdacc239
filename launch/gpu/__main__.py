import sys

from prompt_tuning.launch.gpu import main

sys.exit(main(prog="python -m launch.gpu"))
